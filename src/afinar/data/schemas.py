"""Detect a dataset's schema and normalise every record to chat messages.

Schemas (names used in recipes as `data.schema`):
    qa          question/answer, pregunta/respuesta, prompt/completion (optional `system`)
    alpaca      instruction / input / output
    messages    OpenAI `messages` (role/content) or ShareGPT `conversations` (from/value)
    user_story  a conversation (text or turns) -> a user story ("Como / Quiero / Para")

A recipe can name the schema and map its roles to the file's columns, e.g.
`columns: {question: "Pregunta frecuente", answer: "Respuesta"}`. `normalise_record` returns an
`Example` or the list of problems that make the record unusable; it never drops one silently.

Missing values: an empty cell, JSON null, and the spellings spreadsheets and databases export for
"nothing here" (MISSING: `null`, `None`, `N/A`, `NaN`, `#N/A`, `-`) are all missing, and the
problem names the spelling found. OpenAI's content parts (`[{"type": "text", "text": ...}]`) are
joined; a part that is not text (an image) is reported by turn.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass, field
from typing import Any

SCHEMAS = ("qa", "alpaca", "messages", "user_story")

# Role of a column -> accepted column names (compared without case, accents or spaces).
ALIASES: dict[str, tuple[str, ...]] = {
    "question": ("question", "pregunta", "prompt", "query", "consulta", "user"),
    "answer": ("answer", "respuesta", "completion", "response", "reply", "assistant"),
    "system": ("system", "sistema", "system_prompt"),
    "instruction": ("instruction", "instruccion"),
    "input": ("input", "entrada", "context", "contexto"),
    "output": ("output", "salida"),
    "messages": ("messages", "conversations", "mensajes"),
    "conversation": ("conversation", "conversacion", "dialogo", "transcript", "transcripcion"),
    "user_story": ("user_story", "historia", "historia_usuario", "historia_de_usuario", "story"),
}
REQUIRED = {
    "qa": ("question", "answer"),
    "alpaca": ("instruction", "output"),
    "messages": ("messages",),
    "user_story": ("conversation", "user_story"),
}
OPTIONAL = {"qa": ("system",), "alpaca": ("input", "system"), "messages": (), "user_story": ("system",)}
# Cell texts that mean "missing" (compared case-folded, stripped).
MISSING = ("null", "none", "n/a", "nan", "#n/a", "-")
# Content-part types that carry no text afinar can train on.
NON_TEXT_PARTS = ("image_url", "input_image", "image", "input_audio", "audio", "file", "input_file", "video")
# ShareGPT and other spellings of the three roles.
ROLE_NAMES = {
    "system": "system", "user": "user", "human": "user", "usuario": "user",
    "assistant": "assistant", "gpt": "assistant", "bot": "assistant", "model": "assistant",
    "asistente": "assistant",
}


@dataclass
class Example:
    """One training conversation, normalised to role/content messages."""

    messages: list[dict[str, str]]
    path: str = ""
    line: int = 0
    kind: str = "original"  # original | paraphrase | negative
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def source(self) -> str:
        return f"{self.path}:{self.line}" if self.path else self.kind

    def first_user(self) -> str:
        return next((m["content"] for m in self.messages if m["role"] == "user"), "")

    def last_answer(self) -> str:
        return next((m["content"] for m in reversed(self.messages) if m["role"] == "assistant"), "")

    def to_dict(self) -> dict[str, Any]:
        return {"messages": self.messages, "source": self.source, "kind": self.kind}


def canonical(name: str) -> str:
    """Column name without case, accents, spaces or dashes: 'Pregunta Frecuente' -> 'pregunta_frecuente'."""
    decomposed = unicodedata.normalize("NFKD", name.strip().lower())
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    return plain.replace(" ", "_").replace("-", "_")


def resolve_columns(columns: list[str], schema: str = "auto", mapping: dict[str, str] | None = None) -> tuple[str, dict[str, str]]:
    """Pick the schema and map each role to a column.

    Returns (schema, {role: column}). Raises ValueError with the columns found and the mapping
    to write when no schema fits.
    """
    mapping = dict(mapping or {})
    by_canon = {canonical(c): c for c in columns}
    unknown = [v for v in mapping.values() if v not in columns]
    if unknown:
        raise ValueError(f"mapped column(s) {unknown} not in the file; its columns are {columns}")
    candidates = SCHEMAS if schema == "auto" else (schema,)
    for name in candidates:
        roles = _match_roles(name, by_canon, mapping)
        if all(r in roles for r in REQUIRED[name]):
            return name, roles
    raise ValueError(_no_schema_message(columns, schema))


def _match_roles(schema: str, by_canon: dict[str, str], mapping: dict[str, str]) -> dict[str, str]:
    roles = {}
    for role in REQUIRED[schema] + OPTIONAL[schema]:
        if role in mapping:
            roles[role] = mapping[role]
            continue
        hit = next((by_canon[a] for a in ALIASES[role] if a in by_canon and by_canon[a] not in mapping.values()), None)
        if hit is not None:
            roles[role] = hit
    return roles


def _no_schema_message(columns: list[str], schema: str) -> str:
    found = ", ".join(repr(c) for c in columns) or "none"
    if schema == "auto":
        return (f"cannot tell the schema from the columns ({found}). Name them in the recipe, e.g. "
                "data: {schema: qa, columns: {question: <column>, answer: <column>}}, "
                "or on the command line: --map question=<column> --map answer=<column>")
    need = ", ".join(REQUIRED[schema])
    example = ", ".join(f"{r}: <column>" for r in REQUIRED[schema])
    return (f"schema {schema!r} needs the columns {need}; the file has {found}. "
            f"Map them in the recipe: data: {{columns: {{{example}}}}}")


def normalise_record(data: Any, schema: str, roles: dict[str, str]) -> tuple[list[dict[str, str]] | None, list[str]]:
    """Messages for one record, or None and the reasons it cannot be used."""
    if not isinstance(data, dict):
        return None, [f"record is not an object (got {type(data).__name__}); each record must be {{...}}"]
    messages, problems = _NORMALISERS[schema](data, roles)
    missing = [p for p in problems if p.startswith("missing ")]
    if missing:  # name what the line does have, and the schema that shape belongs to
        problems = [p for p in problems if not p.startswith("missing ")] + [_missing_roles(data, schema, missing)]
    return messages, problems


def _missing_roles(data: dict, schema: str, missing: list[str]) -> str:
    keys = [k for k, v in data.items() if v not in (None, "")]
    what = " and ".join(m.removeprefix("missing ") for m in missing)
    has = ", ".join(repr(k) for k in keys) or "no filled keys"
    try:
        other, _ = resolve_columns(keys, "auto")
    except ValueError:
        other = None
    if other and other != schema:
        need = ", ".join(repr(r) for r in REQUIRED[schema])
        return (f"missing {what}: this line has {has}, the keys of the {other!r} schema, while the file is read as "
                f"{schema!r} ({need}); rewrite the line with those keys or move it to a file of its own")
    return f"missing {what}: this line has {has}"


def _text(data: dict, roles: dict[str, str], role: str, problems: list[str], required: bool = True) -> str:
    column = roles.get(role)
    value = data.get(column) if column else None
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            problems.append(f"empty {column or role!r}" if column in data else f"missing {column or role!r}")
        return ""
    if isinstance(value, str) and value.strip().casefold() in MISSING:
        if required:
            problems.append(f"empty {column!r}: it holds {value.strip()!r}, taken as a missing value; "
                            "write the text or remove the line")
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        problems.append(f"{column!r} must be text, got {type(value).__name__}")
        return ""
    return value.strip()


def _with_system(system: str, messages: list[dict[str, str]]) -> list[dict[str, str]]:
    return ([{"role": "system", "content": system}] if system else []) + messages


def _qa(data: dict, roles: dict[str, str]):
    problems: list[str] = []
    question = _text(data, roles, "question", problems)
    answer = _text(data, roles, "answer", problems)
    system = _text(data, roles, "system", problems, required=False)
    if problems:
        return None, problems
    return _with_system(system, [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]), []


def _alpaca(data: dict, roles: dict[str, str]):
    problems: list[str] = []
    instruction = _text(data, roles, "instruction", problems)
    extra = _text(data, roles, "input", problems, required=False)
    output = _text(data, roles, "output", problems)
    system = _text(data, roles, "system", problems, required=False)
    if problems:
        return None, problems
    prompt = f"{instruction}\n\n{extra}" if extra else instruction
    return _with_system(system, [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]), []


def _user_story(data: dict, roles: dict[str, str]):
    problems: list[str] = []
    column = roles["conversation"]
    convo = data.get(column)
    if isinstance(convo, list):
        convo = "\n".join(_turn_line(t) for t in convo)
        data = {**data, column: convo}
    conversation = _text(data, roles, "conversation", problems)
    story = _text(data, roles, "user_story", problems)
    system = _text(data, roles, "system", problems, required=False)
    if problems:
        return None, problems
    return _with_system(system, [{"role": "user", "content": conversation}, {"role": "assistant", "content": story}]), []


def _turn_line(turn: Any) -> str:
    if isinstance(turn, dict):
        who = turn.get("role") or turn.get("from") or turn.get("speaker") or ""
        what = turn.get("content") or turn.get("value") or turn.get("text") or ""
        if isinstance(what, list):
            what = _join_parts(what, [], "")
        return f"{who}: {what}" if who else str(what)
    return str(turn)


def _messages(data: dict, roles: dict[str, str]):
    turns = data.get(roles["messages"])
    if turns is None:
        return None, [f"missing {roles['messages']!r}"]
    if not isinstance(turns, list) or not turns:
        return None, [f"{roles['messages']!r} must be a non-empty list of turns"]
    problems: list[str] = []
    messages = [m for i, t in enumerate(turns, 1) if (m := _turn(i, t, problems))]
    if not problems:
        problems += conversation_problems(messages)
    return (None, problems) if problems else (messages, [])


def _turn(index: int, turn: Any, problems: list[str]) -> dict[str, str] | None:
    if not isinstance(turn, dict):
        problems.append(f"turn {index} is not an object")
        return None
    raw_role = turn.get("role", turn.get("from"))
    content = turn.get("content", turn.get("value"))
    if raw_role is None:
        problems.append(f"turn {index} has no 'role' (or ShareGPT 'from')")
        return None
    role = ROLE_NAMES.get(str(raw_role).strip().lower())
    if role is None:
        problems.append(f"turn {index} has unknown role {raw_role!r}; use system, user or assistant")
        return None
    if isinstance(content, list):
        found = len(problems)
        content = _join_parts(content, problems, f"turn {index} ({role})")
        if len(problems) > found:
            return None
    if not isinstance(content, str) or not content.strip():
        problems.append(f"turn {index} ({role}) has empty content")
        return None
    if content.strip().casefold() in MISSING:
        problems.append(f"turn {index} ({role}) holds {content.strip()!r}, taken as a missing value; write the text")
        return None
    return {"role": role, "content": content.strip()}


def _join_parts(parts: list, problems: list[str], where: str) -> str:
    """OpenAI content parts -> one text (text parts joined by newlines); other parts are problems."""
    texts = []
    for j, part in enumerate(parts, 1):
        if isinstance(part, str):
            texts.append(part)
            continue
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("text", "input_text", "output_text") and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind in NON_TEXT_PARTS:
            problems.append(f"{where} part {j} is an {kind!r} part: afinar trains on text only; remove it "
                            "or describe it in a text part")
        else:
            problems.append(f"{where} part {j} is not a text part ({{\"type\": \"text\", \"text\": ...}}); "
                            f"got {json.dumps(part, ensure_ascii=False)[:80]}")
    return "\n".join(t.strip() for t in texts if t.strip())


def conversation_problems(messages: list[dict[str, str]]) -> list[str]:
    """Order problems: system only first, user and assistant alternating, at least one reply."""
    problems = []
    offset = 1 if messages and messages[0]["role"] == "system" else 0
    body = messages[offset:]
    if any(m["role"] == "system" for m in body):
        problems.append("a system turn appears after the start; only the first turn may be system")
    if body and body[0]["role"] == "assistant":
        problems.append("the conversation starts with an assistant turn; it must start with a user turn")
    for i in range(1, len(body)):
        if body[i]["role"] == body[i - 1]["role"] and body[i]["role"] != "system":
            problems.append(f"two {body[i]['role']} turns in a row (turns {i + offset} and {i + offset + 1}); merge them or add the missing reply")
    if not any(m["role"] == "assistant" for m in body):
        problems.append("no assistant reply: nothing to learn from this record")
    return problems


_NORMALISERS = {"qa": _qa, "alpaca": _alpaca, "messages": _messages, "user_story": _user_story}
