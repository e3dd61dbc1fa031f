"""Read dataset files (CSV, JSON, JSONL) into raw records that remember their physical line.

Used by `afinar.data.check`: `read_file(path)` returns a `RawFile` whose records are the
parsed objects (dicts for valid rows) and whose issues list everything that went wrong while
decoding and parsing, each with `path:line`. Nothing is dropped silently: a row that cannot be
parsed becomes an issue, and the caller counts it.

Encodings: UTF-8 with or without BOM, UTF-16 with BOM, and Windows-1252 (what Excel on Windows
writes for Spanish text), which is accepted with a warning only when the decoded text looks like
real Latin text. Anything else is refused rather than turned into mojibake.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from afinar.errors import DataError

FORMATS = ("csv", "json", "jsonl")
CSV_DELIMITERS = (",", ";", "\t")
# "Ã³", "Ã±", "Â¿": UTF-8 bytes that were decoded as Latin-1 and encoded again.
_MOJIBAKE = re.compile("[ÃÂ][\u0080-\u00bf]")
# Characters Windows-1252 decodes that are plausible in Spanish/English text.
_CP1252_PLAUSIBLE = set("áéíóúüñÁÉÍÓÚÜÑ¿¡çÇàèìòùâêîôûäëïöÀÈÌÒÙºª°€“”‘’–—…«»·´¨©®")


@dataclass
class Issue:
    """One problem in the data, printed as `path:line: severity: message`."""

    path: str
    line: int | None
    message: str
    severity: str = "error"  # "error" blocks training; "warning" does not

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: {self.severity}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "line": self.line, "severity": self.severity, "message": self.message}


@dataclass
class RawRecord:
    path: str
    line: int
    data: Any  # a dict for a well-formed record; anything else is reported by the schema stage


@dataclass
class RawFile:
    path: str
    format: str
    encoding: str
    records: list[RawRecord] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)  # CSV header, or keys seen in JSON records
    delimiter: str | None = None
    unreadable: int = 0  # rows that could not be parsed at all (each has an issue)


def read_file(path: str | Path) -> RawFile:
    """Decode and parse one dataset file. Raises DataError when the file cannot be read at all."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file")
    if p.is_dir():
        raise DataError(f"{p}: is a folder; name the data files inside it")
    text, encoding, issues = decode_bytes(str(p), p.read_bytes())
    fmt = detect_format(p, text)
    parser = {"csv": _parse_csv, "json": _parse_json, "jsonl": _parse_jsonl}[fmt]
    raw = RawFile(path=str(p), format=fmt, encoding=encoding, issues=issues)
    parser(text, raw)
    if not raw.columns:
        raw.columns = _keys_seen(raw.records)
    return raw


def decode_bytes(path: str, data: bytes) -> tuple[str, str, list[Issue]]:
    """Return (text, encoding name, warnings). Raises DataError for undecodable bytes."""
    for bom, name in ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")):
        if data.startswith(bom):
            return _normalise_newlines(data.decode(name)), name, []
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _decode_legacy(path, data, exc)
    issues = []
    bad = _MOJIBAKE.search(text)
    if bad:
        line = text.count("\n", 0, bad.start()) + 1
        raise DataError(
            f"{path}:{line}: the text looks double-encoded ({bad.group()!r} where an accented letter "
            "belongs): the file was converted to UTF-8 twice. Re-export it from the original as UTF-8."
        )
    return _normalise_newlines(text), "utf-8", issues


def _decode_legacy(path: str, data: bytes, exc: UnicodeDecodeError) -> tuple[str, str, list[Issue]]:
    line = data.count(b"\n", 0, exc.start) + 1
    refuse = DataError(
        f"{path}:{line}: not valid UTF-8 (byte 0x{data[exc.start]:02x}) and not recognisable as "
        "Windows-1252 text; save the file as UTF-8 (in Excel: 'CSV UTF-8')."
    )
    try:
        text = data.decode("cp1252")
    except UnicodeDecodeError:
        raise refuse from None
    non_ascii = [c for c in text if ord(c) > 127]
    if sum(c in _CP1252_PLAUSIBLE for c in non_ascii) < 0.9 * len(non_ascii):
        raise refuse
    warning = Issue(path, line, "not UTF-8; decoded as Windows-1252 (Excel's default). "
                    "Save the file as UTF-8 to silence this warning.", "warning")
    return _normalise_newlines(text), "cp1252", [warning]


def _normalise_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def detect_format(path: Path, text: str) -> str:
    """Format from the extension, or from the content when the extension says nothing."""
    ext = path.suffix.lower()
    if ext in (".csv", ".tsv"):
        return "csv"
    if ext in (".jsonl", ".ndjson"):
        return "jsonl"
    if ext == ".json":
        return "json"
    if ext not in ("", ".txt"):
        raise DataError(f"{path}: unsupported file type {ext!r}; afinar reads .csv, .tsv, .json, .jsonl (or .txt holding one of them)")
    head = text.lstrip()
    if head.startswith("["):
        return "json"
    if head.startswith("{"):
        first_lines = [ln for ln in head.splitlines()[:3] if ln.strip()]
        return "jsonl" if all(ln.strip().startswith("{") and ln.strip().endswith("}") for ln in first_lines) else "json"
    return "csv"


# --- CSV -------------------------------------------------------------------------------------

def sniff_delimiter(header: str) -> str:
    """The delimiter that splits the header line into the most fields (ties: , then ; then tab)."""
    counts = {d: len(next(csv.reader([header], delimiter=d))) for d in CSV_DELIMITERS}
    return max(CSV_DELIMITERS, key=lambda d: counts[d])


def _parse_csv(text: str, raw: RawFile) -> None:
    first = next((ln for ln in text.split("\n") if ln.strip()), "")
    if not first:
        return
    raw.delimiter = sniff_delimiter(first)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=raw.delimiter)
    header: list[str] | None = None
    last_line = 0
    try:
        for row in reader:
            start, last_line = last_line + 1, reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if header is None:
                header = _csv_header(raw, row, start)
                continue
            _csv_row(raw, header, row, start)
    except csv.Error as exc:
        raw.issues.append(Issue(raw.path, last_line + 1, f"unreadable CSV ({exc}); check the quotes on this row"))
        raw.unreadable += 1


def _csv_header(raw: RawFile, row: list[str], line: int) -> list[str]:
    header = [cell.strip() for cell in row]
    raw.columns = header
    seen = set()
    for name in header:
        if not name:
            raw.issues.append(Issue(raw.path, line, "the header has an empty column name", "warning"))
        elif name in seen:
            raw.issues.append(Issue(raw.path, line, f"the header names column {name!r} twice; rename one"))
        seen.add(name)
    return header


def _csv_row(raw: RawFile, header: list[str], row: list[str], line: int) -> None:
    if len(row) != len(header):
        sep = {"\t": "tab"}.get(raw.delimiter, repr(raw.delimiter))
        raw.issues.append(Issue(
            raw.path, line,
            f"row has {len(row)} fields but the header has {len(header)}; an unquoted {sep} inside a "
            f"field splits it: put that field in double quotes",
        ))
        raw.unreadable += 1
        return
    raw.records.append(RawRecord(raw.path, line, {k: v.strip() for k, v in zip(header, row) if k}))


# --- JSON and JSONL --------------------------------------------------------------------------

_DECODER = json.JSONDecoder()
_WS = re.compile(r"[ \t\n\r]*")


def _parse_jsonl(text: str, raw: RawFile) -> None:
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raw.issues.append(Issue(raw.path, number, f"invalid JSON: {exc.msg} (column {exc.colno})"))
            raw.unreadable += 1
            continue
        raw.records.append(RawRecord(raw.path, number, obj))


def _parse_json(text: str, raw: RawFile) -> None:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raw.issues.append(Issue(raw.path, exc.lineno, f"invalid JSON: {exc.msg} (column {exc.colno}); "
                                "nothing in this file can be read until it is fixed"))
        raw.unreadable += 1
        return
    start = _WS.match(text, 0).end()
    for pos, obj in _json_records(text, start, doc):
        raw.records.append(RawRecord(raw.path, text.count("\n", 0, pos) + 1, obj))


def _json_records(text: str, pos: int, doc: Any) -> list[tuple[int, Any]]:
    """(offset, record) pairs: an array of records, an object of records, or {"data": [...]}."""
    if isinstance(doc, list):
        return _scan_array(text, pos)
    if isinstance(doc, dict):
        members = _scan_object(text, pos)
        lists = [(k, p) for k, p, v in members if isinstance(v, list)]
        if len(members) == 1 and lists:
            return _scan_array(text, lists[0][1])
        if members and all(isinstance(v, dict) for _, _, v in members) and not _looks_like_record(doc):
            return [(p, v) for _, p, v in members]
        return [(pos, doc)]
    return [(pos, doc)]


def _looks_like_record(doc: dict) -> bool:
    keys = {k.lower() for k in doc}
    return bool(keys & {"messages", "conversations", "question", "pregunta", "instruction", "prompt"})


def _scan_array(text: str, pos: int) -> list[tuple[int, Any]]:
    out, pos = [], _WS.match(text, pos + 1).end()  # skip "["
    while text[pos] != "]":
        obj, end = _DECODER.raw_decode(text, pos)
        out.append((pos, obj))
        pos = _WS.match(text, end).end()
        if text[pos] == ",":
            pos = _WS.match(text, pos + 1).end()
    return out


def _scan_object(text: str, pos: int) -> list[tuple[str, int, Any]]:
    out, pos = [], _WS.match(text, pos + 1).end()  # skip "{"
    while text[pos] != "}":
        key, end = _DECODER.raw_decode(text, pos)
        pos = _WS.match(text, end).end() + 1  # skip ":"
        pos = _WS.match(text, pos).end()
        value, end = _DECODER.raw_decode(text, pos)
        out.append((key, pos, value))
        pos = _WS.match(text, end).end()
        if text[pos] == ",":
            pos = _WS.match(text, pos + 1).end()
    return out


def _keys_seen(records: list[RawRecord]) -> list[str]:
    keys: dict[str, None] = {}
    for rec in records[:200]:
        if isinstance(rec.data, dict):
            keys.update(dict.fromkeys(rec.data))
    return list(keys)
