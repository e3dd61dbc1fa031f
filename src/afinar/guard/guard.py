"""The domain guard: decide, before generating, whether a question belongs to the assistant's domain.

Built from the training records (each a curated question, its paraphrases and its answer):
  1. every record gets a sentence embedding of each of its questions (the embedded MiniLM) and a
     bag of stemmed terms of its question and of its answer (see `text.py`);
  2. a query is cleaned of injection wrappers (`injection.py`) and scored against every record:
     score = w * cosine(query, closest question) + (1 - w) * IDF coverage of the query's stems
     by the record's question and answer (w = 0.5: the best of a grid over six signals, tuned
     on the tutor probe set and checked on an unseen FAQ, see bench/guard_bench.py);
  3. thresholds are calibrated from the data itself (see `calibrate`);
  4. `check(query, mode)` returns a `Decision`: in or out of the domain, the best record (the
     curated answer that strict mode returns) and its score.
Neither signal alone is enough (the English MiniLM ranks Spanish paraphrases poorly; words alone
miss synonyms), which is why both are combined; `bench/guard_bench.py` measures the result.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from afinar.guard.injection import asks_for_instructions, strip_injection
from afinar.guard.text import IdfIndex, terms

EMBED_WEIGHT = 0.5
MAX_FALSE_REFUSALS = 0.03


@dataclass
class Record:
    questions: list[str]
    answer: str
    source: str = ""


@dataclass
class Decision:
    in_domain: bool
    score: float
    record: Record | None
    reason: str  # in_domain | out_of_domain | asks_for_instructions | empty
    latency_ms: float = 0.0


@dataclass
class Thresholds:
    refuse: float
    strict: float
    calibration: dict = field(default_factory=dict)


class DomainGuard:
    """Scores questions against the domain's records; see the module docstring."""

    def __init__(self, records: list[Record], embedder, thresholds: Thresholds | None = None,
                 question_embeddings: np.ndarray | None = None):
        self.records = records
        self.embedder = embedder
        self.owner = [i for i, r in enumerate(records) for _ in r.questions]
        questions = [q for r in records for q in r.questions]
        self.q_emb = question_embeddings if question_embeddings is not None else self._embed(questions)
        self.qa_index = IdfIndex([[t for q in r.questions for t in terms(q)] + terms(r.answer) for r in records])
        self.thresholds = thresholds or Thresholds(0.5, 0.6)

    def _embed(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self.embedder.encode(texts, normalize_embeddings=True, batch_size=64, show_progress_bar=False), dtype=np.float32)

    def matrix(self, texts: list[str]) -> np.ndarray:
        """[texts x records] scores, after removing injection wrappers (0 for texts with no content words)."""
        cleaned = [strip_injection(t)[0] for t in texts]
        emb = self._embed([c or "-" for c in cleaned]) @ self.q_emb.T
        out = np.zeros((len(texts), len(self.records)), dtype=np.float32)
        for i, (row, text) in enumerate(zip(emb, cleaned)):
            qt = terms(text)
            if not qt:
                continue
            per_record = np.full(len(self.records), -1.0, dtype=np.float32)
            np.maximum.at(per_record, self.owner, row)
            out[i] = EMBED_WEIGHT * per_record + (1 - EMBED_WEIGHT) * np.asarray(self.qa_index.coverage(qt))
        return out

    def scores(self, texts: list[str]) -> list[tuple[int, float]]:
        """(best record, score) for each text."""
        m = self.matrix(texts)
        best = m.argmax(axis=1)
        return [(int(b), float(m[i, b])) for i, b in enumerate(best)]

    def check(self, text: str, mode: str = "refuse") -> Decision:
        """In or out of the domain, for `mode` 'refuse' or 'strict'."""
        start = time.perf_counter()
        if asks_for_instructions(text):
            return Decision(False, 0.0, None, "asks_for_instructions", _ms(start))
        if not strip_injection(text)[0]:
            return Decision(False, 0.0, None, "empty", _ms(start))
        best, score = self.scores([text])[0]
        threshold = self.thresholds.strict if mode == "strict" else self.thresholds.refuse
        inside = score >= threshold
        return Decision(inside, score, self.records[best], "in_domain" if inside else "out_of_domain", _ms(start))

    def calibrate(self, negatives: list[str], seed: int = 0) -> Thresholds:
        """Pick the refuse and strict thresholds from the domain's own records.

        1. covered positives: perturbed copies of each record's questions, scored normally;
        2. uncovered positives: the same copies scored with their own record left out, i.e.
           in-domain questions the records do not answer exactly (the refuse mode must let
           them through; the strict mode must not);
        3. negatives: bundled out-of-domain questions and injection attempts.
        refuse: the best split of (covered + uncovered) against negatives, lowered if needed so
        that covered positives are refused at most MAX_FALSE_REFUSALS of the time;
        strict: the best split of covered positives against negatives + uncovered ones.
        """
        rng = random.Random(seed)
        positives, owners = [], []
        for i, r in enumerate(self.records):
            for q in r.questions[:2]:
                positives.append(perturb(q, rng))
                owners.append(i)
        m = self.matrix(positives)
        covered = m.max(axis=1)
        rows = np.arange(len(owners))
        m[rows, owners] = -1.0
        uncovered = m.max(axis=1) if len(self.records) > 1 else np.zeros(0)
        neg = np.array([s for _, s in self.scores(negatives)])
        refuse = min(_best_split(np.concatenate([covered, uncovered]), neg), float(np.quantile(covered, MAX_FALSE_REFUSALS)))
        strict = max(refuse, _best_split(covered, np.concatenate([neg, uncovered])))
        self.thresholds = Thresholds(refuse, strict, {
            "covered_positives": len(covered), "negatives": len(neg),
            "negatives_refused_at_refuse": round(float((neg < refuse).mean()), 4),
            "uncovered_kept_at_refuse": round(float((uncovered >= refuse).mean()), 4) if len(uncovered) else None,
            "covered_kept_at_strict": round(float((covered >= strict).mean()), 4),
        })
        return self.thresholds

    def save(self, folder: Path) -> None:
        from afinar.io import atomic_dir

        with atomic_dir(folder) as tmp:
            np.save(tmp / "question_embeddings.npy", self.q_emb)
            (tmp / "guard.json").write_text(json.dumps({
                "records": [asdict(r) for r in self.records], "thresholds": asdict(self.thresholds),
                "embed_weight": EMBED_WEIGHT}, ensure_ascii=False, indent=1), encoding="utf-8")

    @classmethod
    def load(cls, folder: Path, embedder) -> DomainGuard:
        data = json.loads((folder / "guard.json").read_text(encoding="utf-8"))
        records = [Record(**r) for r in data["records"]]
        emb = np.load(folder / "question_embeddings.npy", allow_pickle=False)
        return cls(records, embedder, Thresholds(**data["thresholds"]), emb)


def perturb(question: str, rng: random.Random) -> str:
    """A question as users type it: some words dropped, lower case, no accents or ¿?."""
    from afinar.guard.text import normalise

    words = normalise(question).split()
    kept = [w for w in words if rng.random() > 0.25] or words
    return " ".join(kept)


def _best_split(pos: np.ndarray, neg: np.ndarray) -> float:
    """Threshold maximising balanced accuracy between positive and negative scores."""
    candidates = np.unique(np.concatenate([pos, neg]))
    best, best_acc = float(candidates[0]), -1.0
    for c in candidates:
        acc = (pos >= c).mean() + (neg < c).mean()
        if acc > best_acc:
            best, best_acc = float(c), acc
    return best


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 2)
