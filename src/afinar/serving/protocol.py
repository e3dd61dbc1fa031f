"""The OpenAI chat completions protocol: request validation and response shapes.

`parse_chat_request` checks a request body field by field and raises `ApiError` (status, message,
param, code) in OpenAI's error shape, so any OpenAI client shows a useful message. The response
builders add one field of afinar's own, `afinar`, that says whether the guard refused.

Fields honoured (HONOURED): model, messages (string content or text parts; system messages are
replaced by the recipe's system prompt), stream, max_tokens / max_completion_tokens, temperature,
top_p, n (1 only). What a domain assistant cannot do is refused with 400 `unsupported_parameter`,
as OpenAI does for a model without the feature (UNSUPPORTED: tools and function calling,
response_format other than text, logprobs). Any other field is accepted and not acted on; the
response names it in `afinar.ignored`, so a client is never left believing it took effect.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass

ROLES = ("system", "user", "assistant")
MAX_MESSAGES = 200
MAX_MESSAGE_CHARS = 32_000
MAX_TOKENS_LIMIT = 4096
HONOURED = ("model", "messages", "stream", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n")
# field -> why it is refused; a field set to its "off" value (null, [], false, {"type": "text"}) passes
UNSUPPORTED = {
    "tools": "tool calling", "tool_choice": "tool calling", "functions": "function calling",
    "function_call": "function calling", "parallel_tool_calls": "tool calling",
    "response_format": "structured output (only {\"type\": \"text\"})", "logprobs": "log probabilities",
    "top_logprobs": "log probabilities", "audio": "audio output", "modalities": "audio output",
}
KEY_COOKIE = "afinar_key"  # the web page keeps the API key in this cookie (serving/web.py sets it)


class ApiError(Exception):
    """An error to send as {"error": {"message", "type", "param", "code"}} with an HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass
class ChatRequest:
    model: str | None
    messages: list[dict[str, str]]  # system messages removed: the recipe's system prompt is used
    stream: bool
    max_tokens: int | None
    temperature: float | None
    top_p: float | None
    ignored: tuple[str, ...] = ()  # fields accepted and not acted on (named in the response)


def json_object(raw: bytes, empty: bytes = b"") -> dict:
    """A request body that must be one JSON object; ApiError(400) otherwise."""
    try:
        body = json.loads(raw or empty)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON ({exc})", code="invalid_json") from None
    except RecursionError:
        raise ApiError(400, "the request body nests arrays or objects too deeply to be a request", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    return body


def parse_chat_request(raw: bytes) -> ChatRequest:
    """Validate a /v1/chat/completions body; raises ApiError(400) naming the bad field."""
    body = json_object(raw)
    messages = _messages(body.get("messages"))
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError(400, "'model' must be a string", "model")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and (not _is_int(max_tokens) or not 1 <= max_tokens <= MAX_TOKENS_LIMIT):
        raise ApiError(400, f"'max_tokens' must be an integer from 1 to {MAX_TOKENS_LIMIT} (got {max_tokens!r})", "max_tokens")
    if body.get("n", 1) != 1:
        raise ApiError(400, "only n=1 is supported", "n")
    for key, what in UNSUPPORTED.items():
        if body.get(key) not in (None, False, [], {}, {"type": "text"}, ["text"], "none"):
            raise ApiError(400, f"'{key}' is not supported: this server's models do not do {what}; "
                                "leave it out", key, "unsupported_parameter")
    ignored = tuple(k for k in body if k not in HONOURED and body[k] is not None
                    and (k not in UNSUPPORTED))
    return ChatRequest(model, messages, bool(body.get("stream", False)), max_tokens,
                       _number(body, "temperature", 0.0, 2.0), _number(body, "top_p", 0.0, 1.0, low_open=True), ignored)


def _messages(messages) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' is required: a non-empty list of {role, content}", "messages")
    if len(messages) > MAX_MESSAGES:
        raise ApiError(400, f"at most {MAX_MESSAGES} messages per request (got {len(messages)})", "messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            role = m.get("role") if isinstance(m, dict) else None
            raise ApiError(400, f"messages[{i}].role must be one of {', '.join(ROLES)} (got {role!r})", f"messages[{i}].role")
        content = _content(m.get("content"), i)
        if len(content) > MAX_MESSAGE_CHARS:
            raise ApiError(400, f"messages[{i}].content is longer than {MAX_MESSAGE_CHARS} characters", f"messages[{i}].content")
        if m["role"] != "system":
            out.append({"role": m["role"], "content": content})
    if not out or out[-1]["role"] != "user":
        raise ApiError(400, "the last message must come from the user", "messages")
    return out


def _content(content, i: int) -> str:
    """A string, or OpenAI's list of {type: text, text} parts joined."""
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
        content = "".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise ApiError(400, f"messages[{i}].content must be a string (or a list of text parts)", f"messages[{i}].content")
    if (bad := _SURROGATE.search(content)) is not None:  # valid JSON ("\ud800"), but no character: the tokenizer cannot take it
        raise ApiError(400, f"messages[{i}].content holds a lone UTF-16 surrogate (U+{ord(bad.group()):04X} at "
                            f"character {bad.start()}), which is not text; send valid Unicode", f"messages[{i}].content")
    return content


_SURROGATE = re.compile("[\ud800-\udfff]")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(body: dict, key: str, low: float, high: float, low_open: bool = False) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (low < value if low_open else low <= value) and value <= high
    if not ok:
        raise ApiError(400, f"'{key}' must be a number from {low:g} to {high:g} (got {value!r})", key)
    return float(value)


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def guard_info(reply, ignored: tuple[str, ...] = ()) -> dict:
    """afinar's own field: did the guard refuse, in which mode, from which record; for a grounded
    answer, the records it was given (`sources`, like citations) and any fact found in none of
    them (`invented`; `replaced`: the best record's own answer was sent instead)."""
    return {"refused": reply.refused, "mode": reply.mode, "source": reply.source, "score": reply.score,
            "sources": reply.sources, "invented": reply.invented, "unsupported": reply.unsupported, "replaced": reply.replaced,
            **({"answer": reply.answer} if reply.replaced else {}),  # what replaces the streamed text
            **({"ignored": list(ignored)} if ignored else {})}  # request fields accepted and not acted on


def completion(cid: str, model: str, reply, ignored: tuple[str, ...] = ()) -> dict:
    return {
        "id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.answer},
                     "finish_reason": "length" if reply.truncated else "stop"}],
        "usage": {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.tokens,
                  "total_tokens": reply.prompt_tokens + reply.tokens},
        "afinar": guard_info(reply, ignored),
    }


def chunk(cid: str, model: str, delta: dict, finish_reason: str | None = None, extra: dict | None = None) -> str:
    """One server-sent event of a streamed completion."""
    data = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}], **(extra or {})}
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"
