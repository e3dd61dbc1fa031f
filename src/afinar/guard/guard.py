"""The domain guard: decide, before generating, whether a question belongs to the assistant's domain.

Built from the training records (each a curated question, its paraphrases and its answer):
  1. every record gets a sentence embedding (the embedded MiniLM) of each of its questions and of
     its first question followed by its answer, and bags of stemmed terms (see `text.py`);
  2. a query is cleaned of injection wrappers (`injection.py`) and scored against every record:
       0.55 * IDF coverage of the query's terms by the record's questions and answer
     + 0.20 * IDF share of the record's question that the query mentions (the reverse direction,
              so "¿Tienen libros electrónicos?" prefers the e-book record to any record with "libro")
     + 0.25 * cosine of the query to the record's closest embedding;
     words carry most of the weight because the English MiniLM ranks Spanish paraphrases poorly
     (weights: the best of a grid on the library FAQ of bench/guard_data, checked on two unseen
     FAQs, see bench/guard_bench.py and BENCHMARKS.md);
  3. thresholds are calibrated from the data itself (see `calibrate`);
  4. `check(query, mode)` returns a `Decision`: in or out of the domain, the best record (the
     curated answer that strict mode returns) and its score.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from afinar.guard.injection import asks_for_instructions, strip_injection
from afinar.guard.text import IdfIndex, terms

# Weights of the three signals (see the module docstring) and the saved guard's format version.
COVERAGE_WEIGHT, REVERSE_WEIGHT, EMBED_WEIGHT = 0.55, 0.20, 0.25
GUARD_VERSION = 3
# Calibration (see `calibrate`): quantiles of the out-of-domain questions' scores.
REFUSE_QUANTILE, STRICT_QUANTILE, MIN_THRESHOLD = 0.85, 0.97, 0.2


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
                 embeddings: np.ndarray | None = None):
        self.records = records
        self.embedder = embedder
        texts = [q for r in records for q in r.questions] + [f"{r.questions[0]} {r.answer}" for r in records]
        self.owner = [i for i, r in enumerate(records) for _ in r.questions] + list(range(len(records)))
        self.emb = embeddings if embeddings is not None else self._embed(texts)
        self.qa_index = IdfIndex([[t for q in r.questions for t in terms(q)] + terms(r.answer) for r in records])
        # each record question's terms with their IDF mass, for `_reverse_coverage`
        question_sets = [[set(terms(q)) for q in r.questions] for r in records]
        self.question_terms = [[(qt, sum(self.qa_index.weight(t) for t in qt)) for qt in sets] for sets in question_sets]
        self.thresholds = thresholds or Thresholds(0.5, 0.5)

    def _embed(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self.embedder.encode(texts, normalize_embeddings=True, batch_size=64, show_progress_bar=False), dtype=np.float32)

    def matrix(self, texts: list[str]) -> np.ndarray:
        """[texts x records] scores, after removing injection wrappers (0 for texts with no content words)."""
        cleaned = [strip_injection(t)[0] for t in texts]
        cosines = self._embed([c or "-" for c in cleaned]) @ self.emb.T
        out = np.zeros((len(texts), len(self.records)), dtype=np.float32)
        for i, (row, text) in enumerate(zip(cosines, cleaned)):
            qt = terms(text)
            if not qt:
                continue
            closest = np.full(len(self.records), -1.0, dtype=np.float32)
            np.maximum.at(closest, self.owner, row)
            out[i] = (COVERAGE_WEIGHT * np.asarray(self.qa_index.coverage(qt))
                      + REVERSE_WEIGHT * self._reverse_coverage(qt) + EMBED_WEIGHT * closest)
        return out

    def _reverse_coverage(self, query_terms: list[str]) -> np.ndarray:
        """For every record, the largest IDF share of one of its questions that the query mentions."""
        index = self.qa_index
        asked = {index.resolve(t) for t in query_terms}
        return np.array([max((sum(index.weight(t) for t in qt & asked) / total for qt, total in questions if total), default=0.0)
                         for questions in self.question_terms], dtype=np.float32)

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
        record = self.records[best]
        if inside and record.refusal:  # closest to one of the dataset's own refusal examples
            return Decision(False, score, record, "like_a_refusal_example", _ms(start))
        return Decision(inside, score, record, "in_domain" if inside else "out_of_domain", _ms(start))

    def calibrate(self, negatives: list[str]) -> Thresholds:
        """Pick the refuse and strict thresholds from out-of-domain questions (`negatives`).

        Real users' paraphrases of a record score far below any copy of its question that can be
        made without a model (measured: the 5th percentile of real paraphrases sits near the 90th
        percentile of out-of-domain questions), so positives made from the records cannot place
        the threshold. The negatives' score distribution can: the refuse threshold lets through
        the top REFUSE_QUANTILE share of them, which kept at most 5% of in-domain paraphrases
        refused on the development FAQ; strict mode, where a wrong curated answer is worse than a
        refusal, uses the higher STRICT_QUANTILE. Both stay above MIN_THRESHOLD.
        """
        neg = np.array([s for _, s in self.scores(negatives)]) if negatives else np.zeros(1)
        refuse = max(MIN_THRESHOLD, float(np.quantile(neg, REFUSE_QUANTILE)))
        strict = max(refuse, float(np.quantile(neg, STRICT_QUANTILE)))
        own = np.array([s for _, s in self.scores([r.questions[0] for r in self.records])])
        self.thresholds = Thresholds(refuse, strict, {
            "negatives": len(negatives),
            "negatives_refused_at_refuse": round(float((neg < refuse).mean()), 4),
            "negatives_refused_at_strict": round(float((neg < strict).mean()), 4),
            "own_questions_kept_at_strict": round(float((own >= strict).mean()), 4),
        })
        return self.thresholds

    def save(self, folder: Path) -> None:
        from afinar.io import atomic_dir

        with atomic_dir(folder) as tmp:
            np.save(tmp / "embeddings.npy", self.emb)
            (tmp / "guard.json").write_text(json.dumps({
                "version": GUARD_VERSION, "records": [asdict(r) for r in self.records],
                "thresholds": asdict(self.thresholds)}, ensure_ascii=False, indent=1), encoding="utf-8")

    @classmethod
    def load(cls, folder: Path, embedder) -> DomainGuard | None:
        """The guard saved in `folder`; None when there is none or it has an older format."""
        path = folder / "guard.json"
        data = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        if data.get("version") != GUARD_VERSION:
            return None
        records = [Record(**r) for r in data["records"]]
        emb = np.load(folder / "embeddings.npy", allow_pickle=False)
        return cls(records, embedder, Thresholds(**data["thresholds"]), emb)


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 2)
