"""`afinar data prepare`: checked data -> train/eval JSONL ready for training.

Steps:
  1. check every file (strict: any error stops unless `data.skip_invalid`); duplicates go first,
     before the split, so a record and its copy can never land on both sides;
  2. split without leakage: by answer (paraphrases of one answer stay together) or by record;
  3. augment the training side with template paraphrases and the teacher's paraphrases of its
     records (`data.generated`, checked against the records: generated.py), and both sides with
     out-of-domain refusals drawn from disjoint pools (eval measures refusal on unseen questions);
  4. write train.jsonl, eval.jsonl, generated.jsonl (the generated items in use, for the index
     and the guard's calibration) and prepare_report.json atomically.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from afinar.data.augment import add_paraphrases, bundled_negatives, language, make_negatives, negatives_needed
from afinar.data.check import DataReport, check_data, normalise_text
from afinar.data.generated import GeneratedItem, check_generated, generated_row
from afinar.data.schemas import Example
from afinar.errors import DataError
from afinar.io import atomic_write_json, atomic_write_jsonl
from afinar.recipes import Recipe

MAX_LISTED_ERRORS = 30
GENERATED_FILE = "generated.jsonl"  # in the run's data/: the generated items in use (index/store.py)


@dataclass
class PreparedData:
    out_dir: Path
    train_path: Path
    eval_path: Path
    report_path: Path
    train: list[Example]
    eval: list[Example]
    report: DataReport
    counts: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        c = self.counts
        return (f"train: {c['train']} examples ({c['train_original']} original, {c['train_paraphrase']} paraphrases, "
                f"{c['train_negative']} refusals); eval: {c['eval']} ({c['eval_negative']} refusals); "
                f"{c['duplicates_removed']} duplicates removed, {c['invalid_skipped']} invalid records skipped"
                + (f"; generated: {', '.join(f'{n} {k}' for k, n in c['generated'].items())}" if c.get("generated") else ""))


def prepare_data(recipe: Recipe, out_dir: str | Path, tokenizer=None, tokenizer_name: str | None = None,
                 report: DataReport | None = None) -> PreparedData:
    """Check, split, augment and write the recipe's data. Raises DataError when the data has errors.

    `report`: a `check_data` report of the same files and settings, to avoid checking twice.
    """
    d = recipe.data
    report = report or check_data(d.files, schema=d.schema_, columns=d.columns, tokenizer=tokenizer,
                        tokenizer_name=tokenizer_name, system_prompt=recipe.system_prompt,
                        max_seq_len=recipe.train.max_seq_len if tokenizer is not None else None,
                        min_examples=d.min_examples)
    generated, gen_issues = check_generated(d.generated, report.examples) if d.generated else ([], [])
    report.issues += gen_issues
    _raise_on_errors(report, d.skip_invalid)
    train, held = split_examples(report.examples, d.eval_fraction, d.split_by, d.seed)
    train_all = train + add_paraphrases(train, d.paraphrases, d.seed) + generated_paraphrases(train, generated)
    eval_all = list(held)
    if recipe.refusal and d.negatives > 0:
        lang = language(" ".join(ex.first_user() for ex in report.examples[:50]))
        pool_train, pool_eval = bundled_negatives()
        train_all += make_negatives(pool_train, negatives_needed(len(train_all), d.negatives), recipe.refusal, lang, d.seed)
        if held:
            eval_all += make_negatives(pool_eval, negatives_needed(len(held), d.negatives), recipe.refusal, lang, d.seed)
    random.Random(d.seed).shuffle(train_all)
    return _write(Path(out_dir), train_all, eval_all, report, generated)


def generated_paraphrases(examples: list[Example], items: list[GeneratedItem]) -> list[Example]:
    """A training example per generated paraphrase of one of `examples` (the training side)."""
    by_question = {normalise_text(ex.first_user()): ex for ex in examples}
    out = []
    for item in items:
        ex = by_question.get(normalise_text(item.record or "")) if item.kind == "paraphrase" else None
        if ex is not None:
            messages = [dict(m) for m in ex.messages]
            first = next(i for i, m in enumerate(messages) if m["role"] == "user")
            messages[first]["content"] = item.question
            out.append(Example(messages, ex.path, ex.line, kind="paraphrase"))  # cited as its record
    return out


def _raise_on_errors(report: DataReport, skip_invalid: bool) -> None:
    fatal = [i for i in report.errors if i.line is None]  # whole-dataset problems: never skippable
    if not report.errors or (skip_invalid and not fatal):
        return
    shown = "\n".join(f"  {i}" for i in report.errors[:MAX_LISTED_ERRORS])
    more = len(report.errors) - MAX_LISTED_ERRORS
    tail = f"\n  ... and {more} more (see `afinar data check`)" if more > 0 else ""
    hint = "" if fatal else "\nFix them, or set data.skip_invalid: true (or --skip-invalid) to train without those records."
    raise DataError(f"the data has {len(report.errors)} error(s):\n{shown}{tail}{hint}")


def split_examples(examples: list[Example], fraction: float, by: str, seed: int) -> tuple[list[Example], list[Example]]:
    """Split into (train, eval). With by='answer', examples sharing an answer stay together."""
    if fraction <= 0 or len(examples) < 2:
        return list(examples), []
    groups: dict[str, list[Example]] = {}
    for i, ex in enumerate(examples):
        key = normalise_text(ex.last_answer()) if by == "answer" else str(i)
        groups.setdefault(key, []).append(ex)
    keys = list(groups)
    random.Random(seed).shuffle(keys)
    target = max(1, round(fraction * len(examples)))
    held: list[Example] = []
    for key in keys[:-1]:  # the last group always trains: never an empty training side
        if len(held) >= target:
            break
        held += groups[key]
    held_ids = {id(ex) for ex in held}
    return [ex for ex in examples if id(ex) not in held_ids], held


def _write(out: Path, train: list[Example], held: list[Example], report: DataReport,
           generated: list[GeneratedItem] = ()) -> PreparedData:
    kinds_train = Counter(ex.kind for ex in train)
    counts = {
        "train": len(train), "eval": len(held),
        "train_original": kinds_train["original"], "train_paraphrase": kinds_train["paraphrase"],
        "train_negative": kinds_train["negative"], "eval_negative": sum(ex.kind == "negative" for ex in held),
        "duplicates_removed": report.n_duplicates, "invalid_skipped": report.n_invalid,
        "generated": dict(Counter(i.kind for i in generated)),
    }
    atomic_write_jsonl(out / GENERATED_FILE, [generated_row(i) for i in generated])
    train_path = atomic_write_jsonl(out / "train.jsonl", [ex.to_dict() for ex in train])
    eval_path = atomic_write_jsonl(out / "eval.jsonl", [ex.to_dict() for ex in held])
    report_path = atomic_write_json(out / "prepare_report.json", {"counts": counts, "check": report.to_dict()})
    return PreparedData(out, train_path, eval_path, report_path, train, held, report, counts)


def load_prepared(path: str | Path) -> list[Example]:
    """Read a train.jsonl / eval.jsonl written by `prepare_data`."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            obj = json.loads(line)
            rows.append(Example(obj["messages"], kind=obj.get("kind", "original"), meta={"source": obj.get("source")}))
    return rows
