"""Build a run's index and guard from its data, save it in runs/<name>/guard/, load it back.

Records: every curated answer of the run's data (train and eval sides: strict mode must be able
to return any of them, and grounding serves every record, held-out ones included), with the
questions that lead to it (originals and paraphrases). Refusal examples are not records.
Calibration negatives: the bundled out-of-domain questions and injection attempts of the training
pool (the eval pool stays unseen for `afinar eval`). Where the recipe lists generated data
(`data.generated`, kept in the run as data/generated.jsonl), its paraphrases join their records'
questions (held-out records' too) and calibrate the guard as positives, and its near misses and
out-of-domain questions as negatives (guard.py: `calibrate`).

`rebuild_run_index` (`afinar index RUN`) reads the recipe's data files again, so a record added
or changed after training is served, grounded on, without retraining: it takes seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from afinar.data import load_prepared
from afinar.data.augment import bundled_negatives
from afinar.data.check import normalise_text
from afinar.data.generated import GeneratedItem, load_generated
from afinar.errors import AfinarError, DataError
from afinar.index.guard import DomainGuard, Record

GUARD_DIR = "guard"


def records_from_run(run_dir: Path, refusal: str = "", splits: tuple[str, ...] = ("train.jsonl", "eval.jsonl")) -> list[Record]:
    """One record per curated answer of the run's prepared data (see `records_from_examples`)."""
    examples = [ex for split in splits if (run_dir / "data" / split).exists() for ex in load_prepared(run_dir / "data" / split)]
    return records_from_examples(examples, refusal)


def records_from_examples(examples, refusal: str = "") -> list[Record]:
    """One record per curated answer; answers equal to the recipe's `refusal` (a dataset's own
    out-of-domain examples, as in the strict tutor's) are marked, so a question that matches them
    is refused rather than answered with the refusal as if it were content."""
    by_answer: dict[str, Record] = {}
    refusal_key = normalise_text(refusal) if refusal else None
    for ex in examples:
        if ex.kind == "negative":
            continue
        key = answer_key(ex.last_answer())
        rec = by_answer.setdefault(key, Record([], ex.last_answer(), ex.meta.get("source") or "", key == refusal_key))
        if ex.first_user() not in rec.questions:
            # the curated question first: it is the one embedded with the answer
            rec.questions.insert(0 if ex.kind != "paraphrase" else len(rec.questions), ex.first_user())
    return list(by_answer.values())


def answer_key(answer: str) -> str:
    """How records are told apart: their answers, normalised (case, spacing, Unicode form)."""
    return normalise_text(answer)


def build_run_guard(run_dir: Path, embedder=None) -> DomainGuard:
    """Build, calibrate and save the guard of a trained run."""
    from afinar.index import load_embedder

    records = records_from_run(run_dir, _refusal(run_dir))
    if not records:
        raise AfinarError(f"{run_dir}: no training records to build the domain guard from (expected "
                          f"{run_dir / 'data' / 'train.jsonl'}); copy the run's data/ folder back, or use --mode off")
    generated = load_generated(run_dir / "data" / "generated.jsonl")
    guard = DomainGuard(with_generated(records, generated), embedder or load_embedder())
    calibrate(guard, generated)
    guard.save(run_dir / GUARD_DIR)
    return guard


def with_generated(records: list[Record], items: list[GeneratedItem]) -> list[Record]:
    """`records`, each with the generated paraphrases of its curated question among its questions."""
    by_question = {normalise_text(r.questions[0]): r for r in records}
    for item in items:
        record = by_question.get(normalise_text(item.record or "")) if item.kind == "paraphrase" else None
        if record is not None and item.question not in record.questions:
            record.questions.append(item.question)
    return records


def calibrate(guard: DomainGuard, items: list[GeneratedItem]) -> None:
    """Calibrate on the bundled negatives, and on the generated items where there are some."""
    guard.calibrate(list(bundled_negatives()[0]), [i.question for i in items if i.kind == "paraphrase"],
                    [i.question for i in items if i.kind != "paraphrase"])


@dataclass
class IndexChange:
    records: int
    added: list[str]  # questions of records that were not in the index
    removed: list[str]
    folder: Path


def rebuild_run_index(run_dir: Path, embedder=None) -> IndexChange:
    """Rebuild the run's index from the recipe's data files as they are now (no training)."""
    from afinar.data import check_data
    from afinar.index import load_embedder
    from afinar.recipes import load_recipe

    recipe = load_recipe(run_dir / "recipe.yaml", check_files=False)
    missing = [f for f in recipe.data.files if not Path(f).exists()]
    if missing:
        raise AfinarError(f"{run_dir}: the recipe's data file {missing[0]} is not here; put it back or edit "
                          f"data.files in {run_dir / 'recipe.yaml'}")
    d = recipe.data
    report = check_data(d.files, schema=d.schema_, columns=d.columns, min_examples=1)
    if report.errors and not d.skip_invalid:
        shown = "\n".join(f"  {i}" for i in report.errors[:10])
        raise DataError(f"the data has {len(report.errors)} error(s); fix them, then index again:\n{shown}")
    old = {answer_key(r.answer): r for r in records_from_run(run_dir, recipe.refusal)}
    fresh = records_from_examples(report.examples, recipe.refusal)
    for record in fresh:  # keep the paraphrases the run was prepared with
        for q in old[answer_key(record.answer)].questions if answer_key(record.answer) in old else []:
            if q not in record.questions:
                record.questions.append(q)
    keys = {answer_key(r.answer) for r in fresh}
    generated = _generated_now(recipe, report.examples, run_dir)
    guard = DomainGuard(with_generated(fresh, generated), embedder or load_embedder())
    calibrate(guard, generated)
    guard.save(run_dir / GUARD_DIR)
    return IndexChange(len(fresh), [r.questions[0] for r in fresh if answer_key(r.answer) not in old],
                       [r.questions[0] for k, r in old.items() if k not in keys], run_dir / GUARD_DIR)


def _generated_now(recipe, examples, run_dir: Path) -> list[GeneratedItem]:
    """The recipe's generated files as they are now (checked against the records as they are now),
    else the run's copy."""
    from afinar.data.generated import check_generated

    files = [f for f in recipe.data.generated if Path(f).exists()]
    if files:
        return check_generated(files, examples)[0]
    return load_generated(run_dir / "data" / "generated.jsonl")


def _refusal(run_dir: Path) -> str:
    from afinar.recipes import load_recipe

    path = run_dir / "recipe.yaml"
    return load_recipe(path, check_files=False).refusal if path.exists() else ""


def load_run_guard(run_dir: Path, embedder=None, threshold: float | None = None) -> DomainGuard:
    """The run's saved guard (built now if the run has none, or one saved by an older afinar).
    `threshold` (the recipe's `guard.threshold`) replaces both calibrated thresholds."""
    from afinar.index import load_embedder

    embedder = embedder or load_embedder()
    guard = DomainGuard.load(run_dir / GUARD_DIR, embedder) or build_run_guard(run_dir, embedder)
    if threshold is not None:
        guard.thresholds.refuse = guard.thresholds.strict = threshold
    return guard
