"""Build a run's guard from its prepared data, save it in runs/<name>/guard/, load it back.

Records: every curated answer of the run's data (train and eval sides, since strict mode must
be able to return any of them), with the questions that lead to it (originals and paraphrases).
Refusal examples are not records. Calibration negatives: the bundled out-of-domain questions and
injection attempts of the training pool (the eval pool stays unseen for `afinar eval`).
"""

from __future__ import annotations

from pathlib import Path

from afinar.data import load_prepared
from afinar.data.augment import bundled_negatives
from afinar.data.check import normalise_text
from afinar.errors import AfinarError
from afinar.guard.guard import DomainGuard, Record

GUARD_DIR = "guard"


def records_from_run(run_dir: Path, refusal: str = "") -> list[Record]:
    """One record per curated answer; answers equal to the recipe's `refusal` (a dataset's own
    out-of-domain examples, as in the strict tutor's) are marked, so a question that matches them
    is refused rather than answered with the refusal as if it were content."""
    by_answer: dict[str, Record] = {}
    refusal_key = normalise_text(refusal) if refusal else None
    for split in ("train.jsonl", "eval.jsonl"):
        path = run_dir / "data" / split
        if not path.exists():
            continue
        for ex in load_prepared(path):
            if ex.kind == "negative":
                continue
            key = normalise_text(ex.last_answer())
            rec = by_answer.setdefault(key, Record([], ex.last_answer(), ex.meta.get("source") or "", key == refusal_key))
            if ex.first_user() not in rec.questions:
                # the curated question first: it is the one embedded with the answer
                rec.questions.insert(0 if ex.kind != "paraphrase" else len(rec.questions), ex.first_user())
    return list(by_answer.values())


def build_run_guard(run_dir: Path, embedder=None) -> DomainGuard:
    """Build, calibrate and save the guard of a trained run."""
    from afinar.guard import load_embedder

    records = records_from_run(run_dir, _refusal(run_dir))
    if not records:
        raise AfinarError(f"{run_dir}: no training records to build the domain guard from (expected "
                          f"{run_dir / 'data' / 'train.jsonl'}); copy the run's data/ folder back, or use --mode off")
    guard = DomainGuard(records, embedder or load_embedder())
    guard.calibrate(list(bundled_negatives()[0]))
    guard.save(run_dir / GUARD_DIR)
    return guard


def _refusal(run_dir: Path) -> str:
    from afinar.recipe import load_recipe

    path = run_dir / "recipe.yaml"
    return load_recipe(path, check_files=False).refusal if path.exists() else ""


def load_run_guard(run_dir: Path, embedder=None, threshold: float | None = None) -> DomainGuard:
    """The run's saved guard (built now if the run has none, or one saved by an older afinar).
    `threshold` (the recipe's `guard.threshold`) replaces both calibrated thresholds."""
    from afinar.guard import load_embedder

    embedder = embedder or load_embedder()
    guard = DomainGuard.load(run_dir / GUARD_DIR, embedder) or build_run_guard(run_dir, embedder)
    if threshold is not None:
        guard.thresholds.refuse = guard.thresholds.strict = threshold
    return guard
