"""The one engine behind `chat`, `ask`, the HTTP API and the web page.

`Engine(runs)` loads the base model once and every run's adapter on it (peft multi-adapter: the
seeds' "several personalities, one base"), each with its own recipe, tokenizer (the chat
template it was trained with) and domain guard. `engine.reply(messages, adapter)` applies the
guard to the last user message first:
  - off:     plain generation;
  - refuse:  out-of-domain questions get the recipe's refusal and nothing is generated;
  - strict:  the curated answer of the best-matching training record, or the refusal; never
             free text.
`engine.stream(...)` yields the reply as it is generated (the guard's decision comes first).
Generation is greedy by default, uses the KV cache and stops at the template's end of turn.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from afinar.errors import AfinarError


@dataclass
class Reply:
    answer: str
    refused: bool
    mode: str
    adapter: str
    source: str | None = None
    score: float | None = None
    latency_ms: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Persona:
    name: str
    run_dir: Path
    recipe: object
    tokenizer: object
    guard: object | None


class Engine:
    """Base model + adapters + guards; thread-safe (one generation at a time)."""

    def __init__(self, run_dirs: list[str | Path], mode: str | None = None):
        from peft import PeftModel

        from afinar.generation import load_run

        if not run_dirs:
            raise AfinarError("name at least one run folder (runs/<name>)")
        first = load_run(run_dirs[0])
        self.model: PeftModel = first.model
        self.personas: dict[str, _Persona] = {}
        self._adapter_names: dict[str, str] = {}  # persona -> peft adapter name
        self._lock = threading.Lock()
        self._add(first.run_dir, first.recipe, first.tokenizer, mode, adapter_name="default")
        for run_dir in run_dirs[1:]:
            self._load_more(Path(run_dir), mode)
        self.current = next(iter(self.personas))

    def _add(self, run_dir: Path, recipe, tokenizer, mode: str | None, adapter_name: str) -> None:
        from afinar.guard.store import load_run_guard

        name = recipe.name
        if name in self.personas:
            raise AfinarError(f"two runs are named {name!r}; rename one (recipe `name`)")
        chosen = mode or recipe.guard_mode
        if chosen != "off" and not recipe.refusal:
            raise AfinarError(f"{run_dir}: guard mode {chosen!r} needs the recipe's `refusal` message")
        guard = load_run_guard(run_dir, threshold=recipe.guard.threshold) if chosen != "off" else None
        self.personas[name] = _Persona(name, run_dir, recipe, tokenizer, guard)
        self.personas[name].recipe.guard.mode = chosen
        self._adapter_names[name] = adapter_name

    def _load_more(self, run_dir: Path, mode: str | None) -> None:
        from afinar.generation import read_run

        recipe, tokenizer, adapter = read_run(run_dir)
        base = self.personas[next(iter(self.personas))].recipe.base_model
        if recipe.base_model != base:
            raise AfinarError(f"{run_dir}: trained on {recipe.base_model!r}, but the loaded base is {base!r}; "
                              "adapters served together must share one base model")
        self.model.load_adapter(str(adapter), adapter_name=recipe.name)
        self._add(run_dir, recipe, tokenizer, mode, adapter_name=recipe.name)

    @property
    def names(self) -> list[str]:
        return list(self.personas)

    def persona(self, name: str | None = None) -> _Persona:
        name = name or self.current
        if name not in self.personas:
            raise AfinarError(f"unknown adapter {name!r}; loaded: {', '.join(self.personas)}")
        return self.personas[name]

    def decide(self, messages: list[dict[str, str]], adapter: str | None = None) -> Reply | None:
        """The guard's answer when it does not let the model generate (None: generate)."""
        p = self.persona(adapter)
        mode = p.recipe.guard.mode
        if mode == "off" or p.guard is None:
            return None
        question = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        d = p.guard.check(question, mode)
        if not d.in_domain:
            return Reply(p.recipe.refusal, True, mode, p.name, None, round(d.score, 4), d.latency_ms)
        if mode == "strict":
            return Reply(d.record.answer, False, mode, p.name, d.record.source, round(d.score, 4), d.latency_ms)
        return None

    def reply(self, messages: list[dict[str, str]], adapter: str | None = None, max_new_tokens: int | None = None) -> Reply:
        """One complete reply (guard first, then generation)."""
        start = time.perf_counter()
        parts, reply = [], None
        for item in self.stream(messages, adapter, max_new_tokens):
            if isinstance(item, Reply):
                reply = item
            else:
                parts.append(item)
        reply.latency_ms = round((time.perf_counter() - start) * 1000, 1)
        return reply

    def stream(self, messages: list[dict[str, str]], adapter: str | None = None,
               max_new_tokens: int | None = None) -> Iterator[str | Reply]:
        """Yield text chunks as they are generated, then the final `Reply`."""
        p = self.persona(adapter)
        decided = self.decide(messages, p.name)
        if decided is not None:
            yield decided.answer
            yield decided
            return
        text = []
        for chunk in self._generate(p, messages, max_new_tokens):
            text.append(chunk)
            yield chunk
        yield Reply("".join(text).strip(), False, p.recipe.guard.mode, p.name)

    def _generate(self, p: _Persona, messages, max_new_tokens: int | None) -> Iterator[str]:
        from transformers import TextIteratorStreamer

        from afinar.generation import generation_inputs

        with self._lock:
            self.model.set_adapter(self._adapter_names[p.name])
            inputs, kwargs = generation_inputs(self.model, p.tokenizer, messages, p.recipe.system_prompt,
                                               p.recipe.generation, max_new_tokens)
            streamer = TextIteratorStreamer(p.tokenizer, skip_prompt=True, skip_special_tokens=True)
            worker = threading.Thread(target=self.model.generate, kwargs={**inputs, **kwargs, "streamer": streamer}, daemon=True)
            worker.start()
            yield from streamer
            worker.join()
