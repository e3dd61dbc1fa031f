"""Grounding: which of the domain's records go into the prompt with a question.

At inference the guard's own ranking of the records (computed anyway for every question, see
`guard.py`) gives them: no second retriever. `select` keeps the best record and, up to
`grounding.k`, the next ones only while they score within `grounding.margin` of it. Why: a
135M model copies a record well and chooses among several badly (issue 17's experiment: the key
fact in 81% of answers with the right record alone in the prompt, 56% among two others), so the
ranking does the choosing and the model sees several records only where the ranking is unsure.
Measured on the development FAQs' paraphrases (bench/guard_data, 5 domains, 300 questions):
with margin 0.02 the ranking is confident for 69% of them, and then the best record is the
right one for 97%; the right record is in the selected context for 92%.

At training (`training_contexts`), RAFT-style (Zhang et al. 2024, arXiv 2403.10131): every
example gets the records that this retriever, over the *training* records only (no held-out
answer leaks into training), ranks for its question, laid out as inference lays them out. The
training question is itself in the index, so its own ranking is always confident; the layouts
that users' paraphrases meet are sampled instead, at the rates measured above: one record
(SINGLE_SHARE), or 2..k records with the right one first (GOLD_FIRST_SHARE) or further down.
A `distractor_only` share (off by default: docs/grounding.md) gets only other records and is
taught the refusal: the records do not answer this question (the near-miss case). Refusal
examples (data.negatives: out-of-domain questions) get no records by default
(`negatives_with_records`): given the records their question retrieves, they teach "a question
worded unlike its records -> refuse", and a run trained on teacher-written paraphrases then
refused 44% of users' in-domain questions with the right record in the prompt (buses FAQ; 6%
without records; on template paraphrases the two measured alike: docs/grounding.md).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

# Layout rates of users' paraphrases on the development FAQs, margin 0.02 (module docstring).
SINGLE_SHARE, GOLD_FIRST_SHARE = 0.65, 0.6


def select(row: np.ndarray, k: int, margin: float) -> list[int]:
    """Indices of the records to give with a question whose scores over all records are `row`:
    the best, then the next ones (at most k in all) that score within `margin` of it."""
    order = np.argsort(-row, kind="stable")[:k]
    best = float(row[order[0]]) if len(order) else 0.0
    return [int(i) for i in order if float(row[i]) >= best - margin]


def pairs(records, indices: list[int]) -> list[tuple[str, str]]:
    """(question, answer) of each chosen record, as `chat_template.with_context` lays them out."""
    return [(records[i].questions[0], records[i].answer) for i in indices]


@dataclass
class TrainingContext:
    records: list[int]  # indices into the training index's records, in prompt order
    answer: str | None = None  # a replacement target (the refusal) for distractor-only examples


def training_contexts(guard, questions: list[str], gold: list[int | None], k: int, distractor_only: float,
                      refusal: str, seed: int, negatives_with_records: bool = False) -> list[TrainingContext]:
    """One context per training question; `gold[i]` is the index of the record that answers
    question i (None for refusal examples). See the module docstring for the layouts."""
    rng = random.Random(seed)
    rows = guard.matrix(questions) if questions else np.zeros((0, len(guard.records)))
    out = []
    for row, g in zip(rows, gold):
        ranked = [int(i) for i in np.argsort(-row, kind="stable")]
        if g is None:  # a refusal example: no records (or those its question retrieves), taught to refuse
            n = _how_many(rng, k)  # drawn either way: the other examples' layouts stay as they were
            out.append(TrainingContext(ranked[:n] if negatives_with_records else []))
            continue
        others = [i for i in ranked if i != g]
        n = _how_many(rng, k)
        if refusal and others and rng.random() < distractor_only:
            out.append(TrainingContext(others[:n], refusal))
            continue
        position = 0 if n == 1 or rng.random() < GOLD_FIRST_SHARE else rng.randrange(1, n)
        chosen = others[: n - 1]
        chosen.insert(min(position, len(chosen)), g)
        out.append(TrainingContext(chosen))
    return out


def _how_many(rng: random.Random, k: int) -> int:
    return 1 if k == 1 or rng.random() < SINGLE_SHARE else rng.randint(2, k)
