"""`afinar data check`: validate dataset files in one pass and report every problem at once.

`check_data(paths, ...)` reads each file, resolves its schema, normalises every record to chat
messages and runs the checks below, returning a `DataReport`. Every record is accounted for:
it is usable, it has errors (each one an `Issue` with `path:line`), or it duplicates an earlier
record (a warning naming that record). `report.examples` holds the usable, de-duplicated records.

Checks: decoding and parsing (readers), schema and columns, per-record content and turn order
(schemas), exact and normalised duplicates (case, whitespace, Unicode form), the same question
with different answers, length in tokens against `max_seq_len`, and a minimum number of examples.
"""

from __future__ import annotations

import re
import statistics
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from afinar.chat_template import encode_chat, with_system
from afinar.data.readers import Issue, RawFile, read_file
from afinar.data.schemas import SCHEMAS, Example, normalise_record, resolve_columns
from afinar.errors import AfinarError

DEFAULT_MIN_EXAMPLES = 10


@dataclass
class FileSummary:
    path: str
    format: str
    encoding: str
    schema: str | None
    columns: dict[str, str]
    delimiter: str | None
    records: int
    usable: int = 0


@dataclass
class TokenStats:
    examples: int
    min: int
    median: int
    p95: int
    max: int
    total: int
    reply_tokens: int
    over_limit: int
    max_seq_len: int | None

    def describe(self) -> str:
        share = 100 * self.reply_tokens / max(1, self.total)
        limit = f"; {self.over_limit} above max_seq_len={self.max_seq_len}" if self.max_seq_len else ""
        return (f"tokens per example: min {self.min}, median {self.median}, p95 {self.p95}, max {self.max}; "
                f"{self.total} in all, {share:.0f}% in replies (the part that is learned){limit}")


@dataclass
class DataReport:
    files: list[FileSummary] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)
    examples: list[Example] = field(default_factory=list)
    n_records: int = 0
    n_invalid: int = 0
    n_duplicates: int = 0
    tokens: TokenStats | None = None
    tokenizer_name: str | None = None

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "error"]

    @property
    def warnings(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "files": [asdict(f) for f in self.files],
            "records": self.n_records,
            "usable": len(self.examples),
            "invalid": self.n_invalid,
            "duplicates": self.n_duplicates,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "issues": [i.to_dict() for i in self.issues],
            "tokens": asdict(self.tokens) if self.tokens else None,
            "tokenizer": self.tokenizer_name,
        }

    def summary_lines(self) -> list[str]:
        lines = []
        for f in self.files:
            cols = ", ".join(f"{k}={v!r}" for k, v in f.columns.items())
            delim = f", delimiter {f.delimiter!r}" if f.delimiter else ""
            lines.append(f"{f.path}: {f.format} ({f.encoding}{delim}), schema {f.schema or '?'} ({cols}), "
                         f"{f.records} records, {f.usable} usable")
        lines.append(f"{self.n_records} records: {len(self.examples)} usable, {self.n_invalid} with errors, "
                     f"{self.n_duplicates} duplicates; {len(self.errors)} errors, {len(self.warnings)} warnings")
        if self.tokens:
            lines.append(f"{self.tokens.describe()} ({self.tokenizer_name})")
        return lines


def check_data(
    paths: list[str | Path],
    *,
    schema: str = "auto",
    columns: dict[str, str] | None = None,
    tokenizer=None,
    tokenizer_name: str | None = None,
    system_prompt: str | None = None,
    max_seq_len: int | None = None,
    min_examples: int = DEFAULT_MIN_EXAMPLES,
) -> DataReport:
    """Validate dataset files and return the report (never raises for bad content).

    Args:
        schema, columns: the recipe's `data.schema` and `data.columns` (auto-detected when unset).
        tokenizer: when given, examples are rendered with its chat template and measured.
        max_seq_len: examples longer than this many tokens are errors.
    Raises:
        AfinarError: a path that does not exist or is a folder.
    """
    report = DataReport(tokenizer_name=tokenizer_name)
    if not paths:
        raise AfinarError("no data files given")
    for path in paths:
        _check_file(read_file(path), schema, columns, report)
    _mark_duplicates(report)
    if tokenizer is not None and report.examples:
        _measure(report, tokenizer, system_prompt, max_seq_len)
    _check_size(report, min_examples, str(paths[0]))
    return report


def _check_file(raw: RawFile, schema: str, columns: dict[str, str] | None, report: DataReport) -> None:
    report.issues.extend(raw.issues)
    report.n_records += len(raw.records) + raw.unreadable
    report.n_invalid += raw.unreadable
    summary = FileSummary(raw.path, raw.format, raw.encoding, None, {}, raw.delimiter, len(raw.records) + raw.unreadable)
    report.files.append(summary)
    if not raw.records:
        return
    if schema == "auto" and not columns and raw.format != "csv":
        schema = _majority_schema(raw)  # a JSON file with a few lines of another shape is read as most lines are
    try:
        summary.schema, summary.columns = resolve_columns(raw.columns, schema, columns)
    except ValueError as exc:
        report.issues.append(Issue(raw.path, raw.records[0].line if raw.format == "csv" else None, str(exc)))
        report.n_invalid += len(raw.records)
        return
    for rec in raw.records:
        messages, problems = normalise_record(rec.data, summary.schema, summary.columns)
        if problems:
            report.n_invalid += 1
            report.issues.extend(Issue(rec.path, rec.line, p) for p in problems)
            continue
        report.examples.append(Example(messages, rec.path, rec.line))
        summary.usable += 1


def _majority_schema(raw: RawFile) -> str:
    """The schema most records' own keys fit ('auto' when none fits): the union of every line's
    keys would let three lines in one shape outvote three hundred in another."""
    votes: dict[str, int] = {}
    for rec in raw.records:
        if isinstance(rec.data, dict):
            try:
                name, _ = resolve_columns([k for k, v in rec.data.items() if v not in (None, "")])
            except ValueError:
                continue
            votes[name] = votes.get(name, 0) + 1
    return max(votes, key=lambda n: (votes[n], -SCHEMAS.index(n))) if votes else "auto"


def normalise_text(text: str) -> str:
    """Comparison key for duplicates: Unicode NFKC, case-folded, whitespace collapsed."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text).casefold()).strip()


def _mark_duplicates(report: DataReport) -> None:
    exact: dict[tuple, Example] = {}
    loose: dict[tuple, Example] = {}
    questions: dict[str, Example] = {}
    kept = []
    for ex in report.examples:
        key = tuple((m["role"], m["content"]) for m in ex.messages)
        norm = tuple((m["role"], normalise_text(m["content"])) for m in ex.messages)
        first = exact.get(key) or loose.get(norm)
        if first is not None:
            how = "exact duplicate" if key in exact else "duplicate (differs only in case, spacing or Unicode form)"
            report.issues.append(Issue(ex.path, ex.line, f"{how} of {first.source}; it is skipped", "warning"))
            report.n_duplicates += 1
            _file_of(report, ex).usable -= 1
            continue
        exact[key], loose[norm] = ex, ex
        q = normalise_text(ex.first_user())
        if q in questions and len(ex.messages) <= 3:
            report.issues.append(Issue(ex.path, ex.line, f"same question as {questions[q].source} with a different "
                                       "answer; the model will learn a mix of both", "warning"))
        questions.setdefault(q, ex)
        kept.append(ex)
    report.examples = kept


def _measure(report: DataReport, tokenizer, system_prompt: str | None, max_seq_len: int | None) -> None:
    lengths, replies, kept = [], 0, []
    for ex in report.examples:
        enc = encode_chat(tokenizer, with_system(ex.messages, system_prompt))
        if max_seq_len and len(enc.input_ids) > max_seq_len:
            report.issues.append(Issue(ex.path, ex.line, f"example is {len(enc.input_ids)} tokens, above "
                                       f"max_seq_len={max_seq_len}: shorten it or raise train.max_seq_len"))
            report.n_invalid += 1
            _file_of(report, ex).usable -= 1
        else:
            kept.append(ex)
        lengths.append(len(enc.input_ids))
        replies += enc.n_label_tokens
    over = sum(1 for n in lengths if max_seq_len and n > max_seq_len)
    report.examples = kept
    ordered = sorted(lengths)
    report.tokens = TokenStats(
        examples=len(lengths), min=ordered[0], median=int(statistics.median(ordered)),
        p95=ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], max=ordered[-1],
        total=sum(lengths), reply_tokens=replies, over_limit=over, max_seq_len=max_seq_len,
    )


def _file_of(report: DataReport, ex: Example) -> FileSummary:
    return next(f for f in report.files if f.path == ex.path)


def _check_size(report: DataReport, min_examples: int, first_path: str) -> None:
    usable = len(report.examples)
    if report.n_records == 0:
        report.issues.append(Issue(first_path, None, "the dataset is empty: no records found"))
    elif usable < min_examples:
        report.issues.append(Issue(first_path, None, f"only {usable} usable example(s); at least {min_examples} "
                                   "are needed to learn anything (add more, or lower data.min_examples)"))
