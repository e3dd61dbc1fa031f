"""The questions `afinar eval` asks: the run's held-out split and, optionally, a probe file.

A probe file is JSONL, one question per line:
    {"question": "...", "expect": "answer" | "refuse",
     "reference": "...",            # optional: a correct answer, scored with chrF and ROUGE-L
     "keys": ["lifo", "O(1)"],      # optional: strings a correct answer contains
     "kind": "paraphrase",          # optional: any label; "injection" is counted apart
     "source": 12}                  # optional, not used: where the answer is in the data
`load_probe` reads the whole file and reports every bad line at once (file:line, what, the fix).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from afinar.errors import DataError

EXPECT = ("answer", "refuse")
FIELDS = ("question", "expect", "reference", "keys", "kind", "source")
HELD_OUT = "held-out"


@dataclass
class EvalItem:
    """One question to ask, and what a correct reply looks like."""

    messages: list[dict[str, str]]  # the conversation up to the question (last message: user)
    expect: str  # answer | refuse
    kind: str = "question"
    reference: str | None = None
    keys: list[str] = field(default_factory=list)
    origin: str = HELD_OUT  # "held-out", or the probe's file:line
    context: list[tuple[str, str]] = field(default_factory=list)  # the records a grounded answer is given
    side: str = ""  # for probe questions with keys: "trained" or "held-out", the split of the record holding them

    @property
    def question(self) -> str:
        return self.messages[-1]["content"]

    @property
    def is_injection(self) -> bool:
        return self.kind == "injection"

    def to_dict(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k not in ("messages", "context")} | {"question": self.question}
        return out | {"records": [q for q, _ in self.context]}


def held_out_items(eval_path: Path) -> list[EvalItem]:
    """The run's held-out split: each conversation's last answer is the reference; the refusal
    examples (out-of-domain questions the run never trained on) expect a refusal."""
    from afinar.data import load_prepared

    if not eval_path.exists():
        raise DataError(f"{eval_path}: the run has no held-out split; run `afinar train` with data.eval_fraction > 0")
    items = []
    for ex in load_prepared(eval_path):
        last = max(i for i, m in enumerate(ex.messages) if m["role"] == "assistant")
        prompt = [m for m in ex.messages[:last] if m["role"] != "system"]
        if ex.kind == "negative":
            items.append(EvalItem(prompt, "refuse", "out_of_domain"))
        else:
            items.append(EvalItem(prompt, "answer", ex.kind, reference=ex.last_answer()))
    return items


def load_probe(path: str | Path) -> list[EvalItem]:
    """Read a probe JSONL file; raises DataError listing every bad line."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such probe file")
    items, problems = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        item, errors = _parse_line(line, f"{path}:{number}")
        problems += [f"  {path}:{number}: {e}" for e in errors]
        if item is not None:
            items.append(item)
    if problems:
        raise DataError(f"{path}: {len(problems)} problem(s) in the probe file:\n" + "\n".join(problems))
    if not items:
        raise DataError(f"{path}: the probe file has no questions; write one JSON object per line, "
                        'e.g. {"question": "¿Qué es una pila?", "expect": "answer"}')
    return items


def _parse_line(line: str, where: str) -> tuple[EvalItem | None, list[str]]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        return None, [f"not valid JSON ({exc.msg} at column {exc.colno}); each line must be one JSON object"]
    if not isinstance(obj, dict):
        return None, ['expected a JSON object like {"question": "...", "expect": "answer"}']
    errors = [f"unknown field {k!r}; known fields: {', '.join(FIELDS)}" for k in obj if k not in FIELDS]
    question, expect = obj.get("question"), obj.get("expect")
    if not isinstance(question, str) or not question.strip():
        errors.append('"question" must be a non-empty string')
    if expect not in EXPECT:
        errors.append(f'"expect" must be "answer" or "refuse" (got {expect!r})')
    reference, kind, keys = obj.get("reference"), obj.get("kind", "question"), obj.get("keys", [])
    if reference is not None and not isinstance(reference, str):
        errors.append('"reference" must be a string')
    if not isinstance(kind, str) or not kind.strip():
        errors.append('"kind" must be a non-empty string')
    if not isinstance(keys, list) or not all(isinstance(k, str) and k.strip() for k in keys):
        errors.append('"keys" must be a list of non-empty strings, e.g. ["lifo", "O(1)"]')
    if expect == "refuse" and (reference or keys):
        errors.append('a question that expects "refuse" takes no "reference" or "keys"')
    if errors:
        return None, errors
    return EvalItem([{"role": "user", "content": question.strip()}], expect, kind.strip(), reference, keys, where), []
