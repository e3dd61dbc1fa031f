"""The domain guard: decide, before generating, whether a question belongs to the assistant's domain.

Built from the training records (each a curated question, its paraphrases and its answer):
  1. every record gets two kinds of sentence embedding (multilingual-e5-small, `embedder.py`):
     its first question followed by its answer, as an e5 "passage", and each of its questions,
     as an e5 "query"; and bags of stemmed terms (see `text.py`);
  2. a query is cleaned of injection wrappers (`injection.py`) and scored against every record,
     as the weighted mean of three signals:
       1.00 * cosine of the query to the record's question-and-answer passage
     + 0.25 * cosine of the query to the record's closest question
     + 0.10 * IDF coverage of the query's terms by the record's questions and answer;
     the embedding carries most of the weight: it ranks users' paraphrases (slang, typos,
     English, a situation described instead of named) far better than words do, and the words
     still break its near-ties. The embedder sees the query as typed (accents and all) unless an
     injection wrapper had to be cut out of it: measured on the development FAQs, the typed text
     kept the worst domain's in-domain questions wrongly refused at 4% instead of 13%. Weights:
     a grid on the benchmark's development FAQs, see bench/guard_bench.py and BENCHMARKS.md;
  3. thresholds are calibrated from the data itself (see `calibrate`);
  4. `check(query, mode)` returns a `Decision`: in or out of the domain, the best record (the
     curated answer that strict mode returns) and its score; strict mode also refuses when
     records on different topics are too close to tell apart (STRICT_MARGIN).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from afinar.index.injection import asks_for_instructions, strip_injection
from afinar.index.text import IdfIndex, terms

# Weights of the three signals (see the module docstring); a score is their weighted mean.
PASSAGE_WEIGHT, QUESTION_WEIGHT, COVERAGE_WEIGHT = 1.0, 0.25, 0.10
GUARD_VERSION = 4
# Calibration (see `calibrate`): quantiles of the out-of-domain questions' scores.
REFUSE_QUANTILE, STRICT_QUANTILE, MIN_THRESHOLD = 0.95, 0.97, 0.2
# Calibration with users' paraphrases (a teacher's, see `calibrate` and `_separate`): used from
# MIN_POSITIVES of them. Chosen on the development FAQs (`_separate`).
MIN_POSITIVES, REFUSE_POSITIVE_QUANTILE, STRICT_NEGATIVE_WEIGHT = 20, 0.15, 2.0
# Strict mode refuses when a record on another topic scores within STRICT_MARGIN of the best one:
# a wrong curated answer is worse than a refusal. Records whose question-and-answer passages have
# a cosine of at least SAME_TOPIC are on the same topic (the strict tutor has a dozen about bubble
# sort), and a near-tie among them is answered with the best. Measured on the seven benchmark FAQs
# together: wrong curated answers 154 -> 87 of 910 probes, share routed right 81.1% -> 81.9%; on
# the strict tutor's probe: 84% routed right either way, wrong answers 5 -> 2 (a plain margin,
# without the topic test, refused 9 of its 20 in-domain questions).
STRICT_MARGIN, SAME_TOPIC = 0.01, 0.9


@dataclass
class Record:
    questions: list[str]
    answer: str
    source: str = ""
    refusal: bool = False  # the dataset's own out-of-domain examples, answered with the refusal


@dataclass
class Decision:
    in_domain: bool
    score: float
    record: Record | None
    reason: str  # in_domain | out_of_domain | asks_for_instructions | empty | like_a_refusal_example | ambiguous
    latency_ms: float = 0.0
    scores: np.ndarray | None = field(default=None, repr=False)  # every record's score: grounding's ranking


@dataclass
class Thresholds:
    refuse: float
    strict: float
    calibration: dict = field(default_factory=dict)


class DomainGuard:
    """Scores questions against the domain's records; see the module docstring."""

    def __init__(self, records: list[Record], embedder, thresholds: Thresholds | None = None,
                 embeddings: np.ndarray | None = None):
        self.records = records
        self.embedder = embedder
        self.owner = np.array([i for i, r in enumerate(records) for _ in r.questions], dtype=np.int64)
        if embeddings is None:  # one passage per record, then every question, as saved by `save`
            embeddings = np.concatenate([embedder.passages([f"{r.questions[0]} {r.answer}" for r in records]),
                                         embedder.queries([q for r in records for q in r.questions])])
        self.emb = np.asarray(embeddings, dtype=np.float32)
        self.qa_index = IdfIndex([[t for q in r.questions for t in terms(q)] + terms(r.answer) for r in records])
        self.thresholds = thresholds or Thresholds(0.5, 0.5)

    def matrix(self, texts: list[str]) -> np.ndarray:
        """[texts x records] scores, after removing injection wrappers (0 for texts with no content words)."""
        n = len(self.records)
        stripped = [strip_injection(t) for t in texts]
        typed = [(cleaned if found else text.strip()) or "-" for text, (cleaned, found) in zip(texts, stripped)]
        cosines = self.embedder.queries(typed) @ self.emb.T
        closest = np.full((n, len(texts)), -1.0, dtype=np.float32)
        np.maximum.at(closest, self.owner, cosines[:, n:].T)  # each record's closest question
        out = np.zeros((len(texts), n), dtype=np.float32)
        for i, (cleaned, _) in enumerate(stripped):
            if qt := terms(cleaned):
                out[i] = (PASSAGE_WEIGHT * cosines[i, :n] + QUESTION_WEIGHT * closest[:, i]
                          + COVERAGE_WEIGHT * np.asarray(self.qa_index.coverage(qt)))
        return out / (PASSAGE_WEIGHT + QUESTION_WEIGHT + COVERAGE_WEIGHT)

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
        row = self.matrix([text])[0]
        best = int(row.argmax())
        score = float(row[best])
        threshold = self.thresholds.strict if mode == "strict" else self.thresholds.refuse
        inside = score >= threshold
        record = self.records[best]
        if inside and record.refusal:  # closest to one of the dataset's own refusal examples
            return Decision(False, score, record, "like_a_refusal_example", _ms(start), row)
        if inside and mode == "strict" and self._torn(row, best):
            return Decision(False, score, record, "ambiguous", _ms(start), row)
        return Decision(inside, score, record, "in_domain" if inside else "out_of_domain", _ms(start), row)

    def _torn(self, row: np.ndarray, best: int) -> bool:
        """True when a record on another topic scores within STRICT_MARGIN of the best one."""
        passages = self.emb[:len(self.records)]
        close = np.flatnonzero(row >= row[best] - STRICT_MARGIN)
        return any(passages[best] @ passages[i] < SAME_TOPIC for i in close if i != best)

    def calibrate(self, negatives: list[str], positives: list[str] | None = None,
                  near_misses: list[str] | None = None) -> Thresholds:
        """Pick the refuse and strict thresholds from out-of-domain questions (`negatives`), and from
        users' paraphrases (`positives`) and near misses where a teacher wrote them (data/generated.py).

        Without positives: real users' paraphrases of a record score far below any copy of its
        question that can be made without a model (measured on the benchmark FAQs: the 5th
        percentile of real paraphrases sits near the 95th percentile of out-of-domain questions),
        so template copies cannot place the threshold. The negatives' score distribution can: the
        refuse threshold lets through the top (1 - REFUSE_QUANTILE) share of them, which kept at
        most 5% of in-domain paraphrases refused on the development FAQ; strict mode, where a wrong
        curated answer is worse than a refusal, uses the higher STRICT_QUANTILE.

        With positives (`_separate`): each is scored without its own question in the index (it is
        one of a record's questions there), and the thresholds are placed between the two
        distributions. Both stay above MIN_THRESHOLD."""
        negatives = list(negatives) + list(near_misses or [])
        neg = np.array([s for _, s in self.scores(negatives)]) if negatives else np.zeros(1)
        pos = self._left_out_scores(positives or [])
        if len(pos) >= MIN_POSITIVES:
            refuse, strict = _separate(pos, neg)
        else:
            refuse = max(MIN_THRESHOLD, float(np.quantile(neg, REFUSE_QUANTILE)))
            strict = max(refuse, float(np.quantile(neg, STRICT_QUANTILE)))
        own = np.array([s for _, s in self.scores([r.questions[0] for r in self.records])])
        info = {"negatives": len(negatives),
                "negatives_refused_at_refuse": round(float((neg < refuse).mean()), 4),
                "negatives_refused_at_strict": round(float((neg < strict).mean()), 4),
                "own_questions_kept_at_strict": round(float((own >= strict).mean()), 4)}
        if len(pos):
            info.update(_separation(pos, neg, refuse, strict))
        if near_misses:
            near = neg[len(negatives) - len(near_misses):]
            info["near_misses"] = len(near_misses)
            info["near_misses_refused_at_refuse"] = round(float((near < refuse).mean()), 4)
        self.thresholds = Thresholds(refuse, strict, info)
        return self.thresholds

    def _left_out_scores(self, positives: list[str]) -> np.ndarray:
        """Each positive's best score over the records, as if no positive were in the index: scored
        by a copy of this guard whose records keep only their other questions (its embeddings are
        reused; the word index is rebuilt). Leaving out only a positive's own copy scored it far
        above users' questions (its siblings in other styles, and its own words in the record's
        word index): on the development FAQs that threshold refused 1% of the positives and 11-13%
        of the probe's paraphrases."""
        if not positives:
            return np.zeros(0)
        held = set(positives)
        n, keep, records = len(self.records), [], []
        row = n
        for r in self.records:
            kept = [q for q in r.questions if q not in held] or r.questions[:1]
            for q in r.questions:
                if q in kept:
                    keep.append(row)
                row += 1
            records.append(Record(kept, r.answer, r.source, r.refusal))
        emb = np.concatenate([self.emb[:n], self.emb[keep]])
        return DomainGuard(records, self.embedder, self.thresholds, emb).matrix(positives).max(axis=1)

    def save(self, folder: Path) -> None:
        from afinar.io import atomic_dir

        with atomic_dir(folder) as tmp:
            np.save(tmp / "embeddings.npy", self.emb)
            (tmp / "guard.json").write_text(json.dumps({
                "version": GUARD_VERSION, "embedder": self.embedder.name, "records": [asdict(r) for r in self.records],
                "thresholds": asdict(self.thresholds)}, ensure_ascii=False, indent=1), encoding="utf-8")

    @classmethod
    def load(cls, folder: Path, embedder) -> DomainGuard | None:
        """The guard saved in `folder`; None when there is none, or it has an older format or was
        embedded by another model (its embeddings would not be comparable with `embedder`'s)."""
        path = folder / "guard.json"
        data = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        if data.get("version") != GUARD_VERSION or data.get("embedder") != embedder.name:
            return None
        records = [Record(**r) for r in data["records"]]
        emb = np.load(folder / "embeddings.npy", allow_pickle=False)
        return cls(records, embedder, Thresholds(**data["thresholds"]), emb)


def _separate(pos: np.ndarray, neg: np.ndarray) -> tuple[float, float]:
    """(refuse, strict) thresholds from users' paraphrases `pos` (scored with no paraphrase of
    theirs in the index: lower than users' questions meet, see `_left_out_scores`) and
    out-of-domain questions and near misses `neg`.

    refuse: the REFUSE_POSITIVE_QUANTILE of `pos`; strict: the threshold with the most paraphrases
    let through plus negatives refused (each a share of its kind, a refused negative counted
    STRICT_NEGATIVE_WEIGHT times: a wrong curated answer is worse than a refusal), never below
    refuse. Chosen on the development FAQs gimnasio and municipalidad with hand-written stand-ins
    for a teacher's output (bench/teacher_data): refuse-mode quantiles 0.05 / 0.10 / 0.15 / 0.20
    / 0.25 routed 88.5 / 93.1 / 93.8 / 93.1 / 93.1% (gimnasio) and 86.2 / 87.7 / 88.5 / 90.0 /
    91.5% (municipalidad) right, with 0 / 0 / 0 / 1.4-2.9 / 4.3% of in-domain questions refused."""
    refuse = max(MIN_THRESHOLD, float(np.quantile(pos, REFUSE_POSITIVE_QUANTILE)))
    candidates = np.unique(np.concatenate([pos, neg]))
    let_through = (pos[None, :] >= candidates[:, None]).mean(axis=1)
    refused = (neg[None, :] < candidates[:, None]).mean(axis=1)
    return refuse, max(refuse, float(candidates[int(np.argmax(let_through + STRICT_NEGATIVE_WEIGHT * refused))]))


def _separation(pos: np.ndarray, neg: np.ndarray, refuse: float, strict: float) -> dict:
    """How the paraphrases and the negatives separate: their AUC, and each side's errors."""
    auc = float((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean())
    return {"positives": int(len(pos)), "auc": round(auc, 4),
            "positives_refused_at_refuse": round(float((pos < refuse).mean()), 4),
            "positives_refused_at_strict": round(float((pos < strict).mean()), 4)}


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 2)
