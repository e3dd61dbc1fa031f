"""Teachers for `afinar data generate`: any OpenAI-compatible chat endpoint, or a local GGUF file.

    teacher = load_teacher("http://127.0.0.1:11434/v1", "qwen2.5:7b")   # Ollama, vLLM, afinar serve, an API
    teacher = load_teacher("models/qwen2.5-7b-instruct-q4_k_m.gguf", "")  # llama.cpp, no server
    text = ask(teacher, messages, parse, cache, retries=5)

Robust like a tool people leave running:
  - the key comes only from the environment (`teacher.api_key_env`); it is sent in the request's
    header and never kept anywhere else: `public_url` (what provenance records) has no
    credentials, and the cache holds prompts and replies only;
  - `ask` retries 429s, 5xx, timeouts, refused connections and replies that `parse` cannot read,
    with exponential backoff and jitter (a 429's Retry-After is honoured); a 4xx other than 429
    (a wrong key, an unknown model) stops at once with what to fix;
  - `RequestCache` appends every answered request to a JSONL file, flushed and fsynced as it
    arrives, so a run killed at record 300 of 500 resumes where it stopped and asks nothing twice.

The HTTP client is the standard library's urllib: one POST per request, no new dependency; the
official `openai` package would add retries of its own that hide what happened from the counts.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from afinar.errors import AfinarError

MAX_BACKOFF_S = 60.0


class TeacherError(AfinarError):
    """The teacher cannot be used as configured (wrong URL, key or model): retrying will not help."""


class Transient(Exception):
    """A failure worth retrying: rate limit, server error, timeout, unreadable reply."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


@dataclass
class Reply:
    text: str
    tokens: int  # prompt + completion tokens, as the teacher counts them (estimated when it does not)


def public_url(url: str) -> str:
    """The URL without user, password or query: what may be written to files and logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class HttpTeacher:
    """An OpenAI-compatible `/chat/completions` endpoint."""

    def __init__(self, url: str, model: str, api_key_env: str = "OPENAI_API_KEY", timeout_s: float = 120.0,
                 temperature: float = 0.8, max_tokens: int = 700):
        base = url.rstrip("/")
        self.endpoint = base if base.endswith("/chat/completions") else base + "/chat/completions"
        self.public_url = public_url(url)
        self.model, self.timeout_s = model, timeout_s
        self.temperature, self.max_tokens = temperature, max_tokens
        self._api_key_env = api_key_env

    def complete(self, messages: list[dict]) -> Reply:
        body = {"model": self.model, "messages": messages, "temperature": self.temperature,
                "max_tokens": self.max_tokens, "stream": False}
        headers = {"Content-Type": "application/json"}
        if key := os.environ.get(self._api_key_env):
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(self.endpoint, json.dumps(body).encode(), headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise self._http_error(exc) from None
        except (TimeoutError, socket.timeout):
            raise Transient(f"no reply within {self.timeout_s:g} s") from None
        except (urllib.error.URLError, ConnectionError) as exc:
            raise Transient(f"cannot reach {self.public_url}: {getattr(exc, 'reason', exc)}") from None
        return _reply_from_body(raw, messages)

    def _http_error(self, exc: urllib.error.HTTPError) -> Exception:
        detail = exc.read()[:300].decode("utf-8", "replace").strip()
        if exc.code == 429 or exc.code >= 500:
            retry_after = exc.headers.get("Retry-After") if exc.headers else None
            return Transient(f"HTTP {exc.code}", float(retry_after) if _is_number(retry_after) else None)
        if exc.code in (401, 403):
            hint = f"set the key in ${self._api_key_env}" if not os.environ.get(self._api_key_env) else f"check ${self._api_key_env}"
            return TeacherError(f"{self.public_url} refused the key (HTTP {exc.code}): {hint}")
        if exc.code == 404:
            return TeacherError(f"{public_url(self.endpoint)}: not found (HTTP 404); is this an OpenAI-compatible "
                                f"endpoint (its base usually ends in /v1), and does it serve model {self.model!r}? {detail}")
        return TeacherError(f"{self.public_url} rejected the request (HTTP {exc.code}): {detail}")


def _reply_from_body(raw: bytes, messages: list[dict]) -> Reply:
    try:
        data = json.loads(raw)
        text = data["choices"][0]["message"]["content"] or ""
    except (ValueError, KeyError, IndexError, TypeError):
        raise Transient(f"not an OpenAI chat completion: {raw[:80]!r}") from None
    usage = data.get("usage") or {}
    tokens = usage.get("total_tokens") or _estimate_tokens(" ".join(m["content"] for m in messages) + text)
    return Reply(text, int(tokens))


class LlamaCppTeacher:
    """A local GGUF file run with llama.cpp (llama-cpp-python, the engine's optional dependency)."""

    def __init__(self, path: str, temperature: float = 0.8, max_tokens: int = 700, n_ctx: int = 4096):
        self.path, self.public_url, self.model = path, f"file:{Path(path).name}", Path(path).stem
        self.temperature, self.max_tokens, self.n_ctx = temperature, max_tokens, n_ctx
        self._llm = None
        self._lock = threading.Lock()  # one llama.cpp context: requests take turns

    def complete(self, messages: list[dict]) -> Reply:
        with self._lock:
            if self._llm is None:
                self._llm = _load_llama(self.path, self.n_ctx)
            out = self._llm.create_chat_completion(messages=messages, temperature=self.temperature,
                                                   max_tokens=self.max_tokens)
        text = out["choices"][0]["message"]["content"] or ""
        return Reply(text, int((out.get("usage") or {}).get("total_tokens") or _estimate_tokens(text)))


def _load_llama(path: str, n_ctx: int):
    try:
        from llama_cpp import Llama
    except ImportError:
        raise TeacherError("a .gguf teacher runs with llama.cpp: pip install 'afinar[llamacpp]' "
                           "(or give the URL of a server that runs it)") from None
    if not Path(path).is_file():
        raise TeacherError(f"no such GGUF file: {path}")
    from afinar.assistant.llamacpp import cpu_has_amx, plain_cpu_buffers

    if cpu_has_amx():  # a teacher's GGUF is usually quantized: llama.cpp's AMX kernels crash on it
        plain_cpu_buffers()
    return Llama(model_path=path, n_ctx=n_ctx, verbose=False)


def load_teacher(url: str, model: str, api_key_env: str = "OPENAI_API_KEY", timeout_s: float = 120.0,
                 temperature: float = 0.8, max_tokens: int = 700):
    """An HttpTeacher for an http(s) URL, a LlamaCppTeacher for a .gguf path."""
    if not url:
        raise TeacherError("no teacher: pass --teacher URL (an OpenAI-compatible endpoint) or a .gguf file, "
                           "or set teacher.url in the recipe")
    if url.lower().endswith(".gguf"):
        return LlamaCppTeacher(url, temperature, max_tokens)
    if urlsplit(url).scheme not in ("http", "https"):
        raise TeacherError(f"teacher {public_url(url)!r}: expected an http(s) URL or a .gguf file")
    if not model:
        raise TeacherError("the teacher needs a model name: --model NAME (as the endpoint lists it at /v1/models)")
    return HttpTeacher(url, model, api_key_env, timeout_s, temperature, max_tokens)


class RequestCache:
    """Answered requests, one JSON line each (key, reply text, tokens), appended as they arrive."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._done: dict[str, dict] = {}
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                    self._done[row["key"]] = row
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by a kill: that request is simply asked again

    @staticmethod
    def key(teacher, messages: list[dict]) -> str:
        ident = [teacher.public_url, teacher.model, teacher.temperature, teacher.max_tokens, messages]
        return hashlib.sha256(json.dumps(ident, ensure_ascii=False, sort_keys=True).encode()).hexdigest()[:32]

    def get(self, key: str) -> dict | None:
        return self._done.get(key)

    def put(self, key: str, reply: Reply) -> None:
        row = {"key": key, "text": reply.text, "tokens": reply.tokens}
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            self._done[key] = row

    def __len__(self) -> int:
        return len(self._done)


@dataclass
class Answer:
    parsed: object
    tokens: int
    cached: bool
    attempts: int


def ask(teacher, messages: list[dict], parse, cache: RequestCache | None, retries: int = 5,
        backoff_s: float = 1.0, rng: random.Random | None = None, on_retry=None) -> Answer:
    """The teacher's reply to `messages`, read by `parse` (which raises ValueError on a reply it
    cannot use); retried as the module docstring says. Raises Transient after the last retry."""
    key = RequestCache.key(teacher, messages) if cache is not None else ""
    if cache is not None and (hit := cache.get(key)) is not None:
        try:
            return Answer(parse(hit["text"]), 0, True, 0)
        except ValueError:
            pass  # a reply the parser no longer reads: ask again
    rng = rng or random.Random()
    for attempt in range(retries + 1):
        try:
            reply = teacher.complete(messages)
            try:
                parsed = parse(reply.text)
            except ValueError as exc:
                raise Transient(f"unreadable reply ({exc})") from None
            if cache is not None:
                cache.put(key, reply)
            return Answer(parsed, reply.tokens, False, attempt + 1)
        except Transient as exc:
            if attempt == retries:
                raise
            delay = exc.retry_after if exc.retry_after is not None else backoff_s * 2 ** attempt * (0.5 + rng.random())
            if on_retry:
                on_retry(str(exc))
            time.sleep(min(MAX_BACKOFF_S, delay))
    raise AssertionError("unreachable")


def _estimate_tokens(text: str) -> int:
    return max(1, len(text) // 4)


def _is_number(value) -> bool:
    try:
        float(value)
        return True
    except (TypeError, ValueError):
        return False
