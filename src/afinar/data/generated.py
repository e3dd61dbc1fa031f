"""Generated data: the file `afinar data generate` writes, read back and checked against the records.

One JSON object per line, which the user may read and edit:

    {"kind": "paraphrase", "question": "a q hora abren el sabado?", "record": "¿Cuál es el horario?",
     "style": "typo", "source": "faq.csv:3", "provenance": {"teacher": "http://127.0.0.1:11434/v1",
     "model": "qwen2.5:7b", "prompt_version": "afinar-generate-1", "created": "2026-12-01T16:00:00+00:00"}}
    {"kind": "near_miss", "question": "¿tienen clases de natación para bebés?", "provenance": {...}}
    {"kind": "out_of_domain", "question": "¿cómo se hace un pan de masa madre?", "provenance": {...}}

`record` is the curated question of the record a paraphrase asks about, exactly as the data file
has it (so line numbers may change). A line with a `flag` (a near miss the guard scores like one
of the records' own questions: the teacher may have asked something a record answers) is kept
out of use until the user deletes its `flag`: generated data is never mixed in silently.

Used downstream (only when the recipe lists the file in `data.generated`): paraphrases train with
their record's answer (training side only) and join the index as the record's questions; all three
kinds calibrate the guard (index/store.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from afinar.data.check import normalise_text
from afinar.data.readers import Issue

KINDS = ("paraphrase", "near_miss", "out_of_domain")
MAX_QUESTION_CHARS = 600


@dataclass
class GeneratedItem:
    kind: str
    question: str
    record: str | None = None
    style: str = ""
    path: str = ""
    line: int = 0
    flag: str = ""
    provenance: dict = field(default_factory=dict)


def looks_generated(path: str | Path) -> bool:
    """True for a JSONL file whose first record is a generated item (its `kind` is one of KINDS)."""
    p = Path(path)
    if p.suffix.lower() not in (".jsonl", ".json") or not p.is_file():
        return False
    with p.open(encoding="utf-8", errors="replace") as fh:
        first = next((ln for ln in fh if ln.strip()), "")
    try:
        obj = json.loads(first)
    except ValueError:
        return False
    return isinstance(obj, dict) and obj.get("kind") in KINDS and "question" in obj and "messages" not in obj


def read_generated(path: str | Path) -> tuple[list[GeneratedItem], list[Issue]]:
    """Every well-formed item of one file, and an Issue (file:line) for each line that is not."""
    items, issues = [], []
    p = str(path)
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        item, problem = _parse_line(line)
        if problem:
            issues.append(Issue(p, number, problem))
        else:
            item.path, item.line = p, number
            items.append(item)
    return items, issues


def _parse_line(line: str) -> tuple[GeneratedItem | None, str]:
    try:
        obj = json.loads(line)
    except ValueError as exc:
        return None, f"not valid JSON ({exc.msg} at column {exc.colno}); fix the line or delete it"
    if not isinstance(obj, dict):
        return None, "expected a JSON object with kind and question"
    kind, question = obj.get("kind"), obj.get("question")
    if kind not in KINDS:
        return None, f"kind {kind!r} is not one of {', '.join(KINDS)}"
    if not isinstance(question, str) or not question.strip():
        return None, "empty 'question'; write it or delete the line"
    if len(question) > MAX_QUESTION_CHARS:
        return None, f"'question' is {len(question)} characters long (an answer pasted in?); at most {MAX_QUESTION_CHARS}"
    record = obj.get("record")
    if kind == "paraphrase" and (not isinstance(record, str) or not record.strip()):
        return None, "a paraphrase needs 'record': the curated question it rephrases, as the data file has it"
    return GeneratedItem(kind, question.strip(), record if kind == "paraphrase" else None, str(obj.get("style") or ""),
                         flag=str(obj.get("flag") or ""), provenance=obj.get("provenance") or {}), ""


def check_generated(paths: list[str | Path], examples) -> tuple[list[GeneratedItem], list[Issue]]:
    """The usable items of the generated files, checked against the data's records (`examples`).

    Errors: malformed lines, a paraphrase whose `record` no record asks. Warnings (the item is left
    out): a copy of a record's question, a duplicate, a line flagged for review."""
    questions = {normalise_text(ex.first_user()): ex for ex in examples}
    seen: set[str] = set()
    usable, issues = [], []
    for path in paths:
        items, problems = read_generated(path)
        issues += problems
        for item in items:
            problem, severity = _problem(item, questions, seen)
            if problem:
                issues.append(Issue(item.path, item.line, problem, severity))
                continue
            seen.add(normalise_text(item.question))
            usable.append(item)
    return usable, issues


def _problem(item: GeneratedItem, questions: dict, seen: set[str]) -> tuple[str, str]:
    key = normalise_text(item.question)
    if item.kind == "paraphrase" and normalise_text(item.record) not in questions:
        return (f"no record asks {item.record!r} (was the data file edited?); copy the record's question "
                "into 'record' exactly, or generate again"), "error"
    if key in questions:
        return "a copy of a record's question, not a paraphrase: left out", "warning"
    if key in seen:
        return "the same question as an earlier line: left out", "warning"
    if item.flag:
        return f"flagged for review ({item.flag}): left out until you delete its 'flag'", "warning"
    return "", ""


def generated_row(item: GeneratedItem) -> dict:
    """The item as a line of a generated file (the run's data/generated.jsonl keeps where it came from)."""
    row = {"kind": item.kind, "question": item.question}
    if item.kind == "paraphrase":
        row.update(record=item.record, style=item.style)
    return dict(row, source=f"{item.path}:{item.line}", provenance=item.provenance)


def load_generated(path: str | Path) -> list[GeneratedItem]:
    """The items of a run's data/generated.jsonl (already checked by prepare); [] when there is none."""
    return read_generated(path)[0] if Path(path).exists() else []


def summary(items: list[GeneratedItem]) -> str:
    """'8 paraphrases, 10 near misses, 0 out-of-domain questions'."""
    names = {"paraphrase": ("paraphrase", "paraphrases"), "near_miss": ("near miss", "near misses"),
             "out_of_domain": ("out-of-domain question", "out-of-domain questions")}
    counts = {kind: sum(i.kind == kind for i in items) for kind in KINDS}
    return ", ".join(f"{n} {names[kind][n != 1]}" for kind, n in counts.items())
