"""The one engine behind `chat`, `ask`, the HTTP API and the web page.

`Engine(runs)` loads the base model once and every run's adapter on it (peft multi-adapter: the
seeds' "several personalities, one base"), each with its own recipe, tokenizer (the chat
template it was trained with) and domain guard. `engine.reply(messages, adapter)` applies the
guard to the last user message first:
  - off:     plain generation;
  - refuse:  out-of-domain questions get the recipe's refusal and nothing is generated;
  - strict:  the curated answer of the best-matching training record, or the refusal; never
             free text.
Grounded runs (`grounding`, on by default for FAQs and transcripts) generate with the records the
guard's ranking gives (index/grounding.py) in the prompt, laid out by `chat_template.with_context`
as in training; the reply names them (`sources`, like citations) and lists any number, time, price,
e-mail, URL or name found in neither them nor the question (`invented`, faithfulness.py), and
whether it copies anything from them at all (`unsupported`); with `grounding.on_unfaithful:
curated` (the default for FAQ and chat data) such an answer is replaced by the best record's own answer.
`engine.stream(...)` yields the reply as it is generated (the guard's decision comes first).
Generation is greedy by default, uses the KV cache and stops at the template's end of turn;
concurrent replies (the API's clients) are generated in one batch by `batcher.Batcher`. With
`backend="llamacpp"` llama.cpp generates instead, over each run's GGUF (`llamacpp.py`): fastest
for one reply at a time on a CPU; the guard, template and decoding settings stay the same.
`backend="auto"` (chat's and ask's default) takes llama.cpp where llama-cpp-python is installed
(`make demo` builds it) and the run's GGUF can be written, the torch engine otherwise, and says
which (`resolve_backend`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from afinar.errors import AfinarError


BACKENDS = ("auto", "torch", "llamacpp")


@dataclass
class Reply:
    answer: str
    refused: bool
    mode: str
    adapter: str
    source: str | None = None
    score: float | None = None
    latency_ms: float = 0.0
    tokens: int = 0  # new tokens generated (0 when the guard answered)
    prompt_tokens: int = 0
    truncated: bool = False  # stopped at max_new_tokens rather than at the end of turn
    sources: list[dict] = field(default_factory=list)  # the records given with the question, in prompt order
    invented: list[str] = field(default_factory=list)  # facts in the generated text found in no source
    unsupported: bool = False  # the generated text copies nothing from its records (an echo, garbled words)
    replaced: bool = False  # the generated text was unfaithful; `answer` is the best record's own

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in ("tokens", "prompt_tokens", "truncated")}


@dataclass
class _Persona:
    name: str
    run_dir: Path
    recipe: object
    tokenizer: object
    guard: object | None
    incomplete: str | None = None  # "this run stopped at step 12 of 64; resume with: ..."
    index_stamp: int | None = None  # mtime of the saved index loaded: a newer one (`afinar index`) is reloaded


class Engine:
    """Base model + adapters + guards; thread-safe: replies asked at the same time are generated
    together in one batch (`batcher.py`), each still streamed to its own caller."""

    def __init__(self, run_dirs: list[str | Path], mode: str | None = None, max_batch: int = 16, backend: str = "torch",
                 log=print):
        """`backend`: 'torch' (the base model once, every adapter on it, concurrent replies batched)
        or 'llamacpp' (each run exported to GGUF with its adapter merged; fastest one at a time)."""
        from afinar.assistant.generation import load_run
        from afinar.models import read_run

        if not run_dirs:
            raise AfinarError("name at least one run folder (runs/<name>)")
        if backend not in BACKENDS:
            raise AfinarError(f"engine {backend!r}: choose one of {', '.join(BACKENDS)}")
        self.backend, self._log = resolve_backend(backend, log), log
        self.personas: dict[str, _Persona] = {}
        self._adapter_names: dict[str, str] = {}  # persona -> peft adapter name
        self._llama: dict[str, object] = {}  # persona -> LlamaCppGenerator
        self.lock = threading.Lock()  # held while adapters are added
        self.model, self._batcher = None, None
        if self.backend == "llamacpp":
            recipe, tokenizer, _ = read_run(run_dirs[0])
            try:
                self._add(Path(run_dirs[0]), recipe, tokenizer, mode, adapter_name="default")
            except Exception as exc:  # no GGUF for this base (an architecture llama.cpp lacks), a failed load: torch
                if backend != "auto":
                    raise
                log(f"engine: torch, as llama.cpp cannot run {run_dirs[0]}: {exc}")
                self.backend, self.personas, self._llama = "torch", {}, {}
        if self.backend == "torch":
            from afinar.assistant.batcher import Batcher

            first = load_run(run_dirs[0])
            self.model = first.model
            self._batcher = Batcher(self.model, max_batch)
            self.lock = self._batcher.lock  # ... and while the model generates
            self._add(first.run_dir, first.recipe, first.tokenizer, mode, adapter_name="default")
        for run_dir in run_dirs[1:]:
            self._load_more(Path(run_dir), mode)
        self.current = next(iter(self.personas))

    def _add(self, run_dir: Path, recipe, tokenizer, mode: str | None, adapter_name: str) -> None:
        from afinar.index.store import load_run_guard
        from afinar.models import run_incomplete

        name = recipe.name
        stopped = run_incomplete(run_dir)
        if stopped:
            self._log(f"warning: {run_dir}: {stopped}")
        if name in self.personas:
            raise AfinarError(f"two runs are named {name!r}; rename one (recipe `name`)")
        chosen = mode or recipe.guard_mode
        if chosen != "off" and not recipe.refusal:
            raise AfinarError(f"{run_dir}: guard mode {chosen!r} needs the recipe's `refusal` message")
        if self.backend == "llamacpp":  # first: where llama.cpp fails, `auto` falls back before the guard is loaded
            from afinar.assistant.llamacpp import LlamaCppGenerator

            self._llama[name] = LlamaCppGenerator(run_dir, recipe, log=self._log)
        needs_index = chosen != "off" or recipe.grounded
        guard = _off_thread(load_run_guard, run_dir, threshold=recipe.guard.threshold) if needs_index else None
        self.personas[name] = _Persona(name, run_dir, recipe, tokenizer, guard, stopped, _index_stamp(run_dir))
        self.personas[name].recipe.guard.mode = chosen
        self._adapter_names[name] = adapter_name

    def _load_more(self, run_dir: Path, mode: str | None) -> None:
        from afinar.models import read_run

        recipe, tokenizer, adapter = read_run(run_dir)
        base = self.personas[next(iter(self.personas))].recipe.base_model
        if recipe.base_model != base:
            raise AfinarError(f"{run_dir}: trained on {recipe.base_model!r}, but the loaded base is {base!r}; "
                              "adapters served together must share one base model")
        if self.model is not None:
            self._batcher.release()
            from afinar.models import ADAPTER_FOR_INFERENCE

            self.model.load_adapter(str(adapter), adapter_name=recipe.name, **ADAPTER_FOR_INFERENCE)
        self._add(run_dir, recipe, tokenizer, mode, adapter_name=recipe.name)

    def add_run(self, run_dir: str | Path) -> str:
        """Load one more run's adapter on the shared base (the studio's freshly trained run)."""
        with self.lock:  # not while replies are being generated
            self._load_more(Path(run_dir), None)
        return list(self.personas)[-1]

    def reload_index(self, run_dir: str | Path) -> None:
        """Load a run's index again (rebuilt by `afinar index` or the studio) without a restart."""
        from afinar.index.store import load_run_guard

        for p in self.personas.values():
            if p.run_dir.resolve() == Path(run_dir).resolve() and p.guard is not None:
                p.index_stamp = _index_stamp(p.run_dir)
                p.guard = _off_thread(load_run_guard, p.run_dir, threshold=p.recipe.guard.threshold)

    @property
    def names(self) -> list[str]:
        return list(self.personas)

    def persona(self, name: str | None = None) -> _Persona:
        name = name or self.current
        if name not in self.personas:
            raise AfinarError(f"unknown adapter {name!r}; loaded: {', '.join(self.personas)}")
        return self.personas[name]

    @property
    def context_length(self) -> int:
        """The longest prompt plus reply the base model takes, in tokens."""
        if self.model is None:
            return min(g.context_length for g in self._llama.values())
        config = self.model.get_base_model().config
        return int(getattr(config, "max_position_embeddings", 0) or 2048)

    def prompt_tokens(self, messages: list[dict[str, str]], adapter: str | None = None, routed=None) -> int:
        """How many tokens the rendered prompt (system prompt, records and chat template included)
        takes; `routed`: this request's `route(...)`, when the caller already has it."""
        p = self.persona(adapter)
        _, context = routed or self.route(messages, p.name)
        return len(p.tokenizer(self._prompt(p, messages, context), add_special_tokens=False)["input_ids"])

    def decide(self, messages: list[dict[str, str]], adapter: str | None = None) -> Reply | None:
        """The guard's answer when it does not let the model generate (None: generate)."""
        return self.route(messages, adapter)[0]

    def route(self, messages: list[dict[str, str]], adapter: str | None = None) -> tuple[Reply | None, list[int]]:
        """(the guard's own answer, or None to generate; the records to ground the generation on)."""
        from afinar.index.grounding import select

        p = self.persona(adapter)
        mode = p.recipe.guard.mode
        if p.guard is None:
            return None, []
        if _index_stamp(p.run_dir) != p.index_stamp:  # rebuilt by `afinar index` since it was loaded
            self._log(f"{p.run_dir}: its index was rebuilt; reloading it")
            self.reload_index(p.run_dir)
        question = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        d = _off_thread(p.guard.check, question, "refuse" if mode == "off" else mode)
        if mode != "off" and not d.in_domain:
            return Reply(p.recipe.refusal, True, mode, p.name, None, round(d.score, 4), d.latency_ms), []
        if mode == "strict":
            return Reply(d.record.answer, False, mode, p.name, d.record.source, round(d.score, 4), d.latency_ms), []
        if not p.recipe.grounded or d.scores is None:
            return None, []
        g = p.recipe.grounding
        return None, select(d.scores, g.k, g.margin)

    def _prompt(self, p: _Persona, messages: list[dict[str, str]], context: list[int]) -> str:
        from afinar.chat_template import render_prompt, with_context
        from afinar.index.grounding import pairs

        records = pairs(p.guard.records, context) if context else None
        return render_prompt(p.tokenizer, with_context(messages, p.recipe.system_prompt, records))

    def reply(self, messages: list[dict[str, str]], adapter: str | None = None, max_new_tokens: int | None = None,
              **options) -> Reply:
        """One complete reply (guard first, then generation); `options` as for `stream`."""
        start = time.perf_counter()
        reply = None
        for item in self.stream(messages, adapter, max_new_tokens, **options):
            if isinstance(item, Reply):
                reply = item
        reply.latency_ms = round((time.perf_counter() - start) * 1000, 1)
        return reply

    def stream(self, messages: list[dict[str, str]], adapter: str | None = None, max_new_tokens: int | None = None,
               cancel: threading.Event | None = None, temperature: float | None = None,
               top_p: float | None = None, min_new_tokens: int | None = None, routed=None) -> Iterator[str | Reply]:
        """Yield text chunks as they are generated, then the final `Reply`.

        `cancel` stops generation at the next token when set (a client that went away frees the
        model); `temperature` and `top_p` override the recipe's decoding for this reply;
        `min_new_tokens` holds back the end of turn until that many tokens (for benchmarks);
        `routed`: this request's `route(...)` when the caller has it (the API, which counted the
        prompt's tokens with it: the guard's embedding is not computed twice).
        """
        p = self.persona(adapter)
        decided, context = routed or self.route(messages, p.name)
        if decided is not None:
            yield decided.answer
            yield decided
            return
        gen = p.recipe.generation.model_copy(update={k: v for k, v in (("temperature", temperature), ("top_p", top_p)) if v is not None})
        text, counts = [], {}
        for chunk in self._generate(p, self._prompt(p, messages, context), max_new_tokens, gen, cancel, counts, min_new_tokens):
            text.append(chunk)
            yield chunk
        reply = Reply("".join(text).strip(), False, p.recipe.guard.mode, p.name, tokens=counts.get("new", 0),
                      prompt_tokens=counts.get("prompt", 0), truncated=counts.get("truncated", False))
        yield self._checked(p, reply, messages, context)

    def _checked(self, p: _Persona, reply: Reply, messages, context: list[int]) -> Reply:
        """A grounded reply with its sources and faithfulness; replaced by the best record's own
        answer when it is unfaithful and the recipe says `on_unfaithful: curated` (FAQ data's default)."""
        from afinar.assistant.faithfulness import check, says_refusal

        if not context:
            return reply
        if says_refusal(reply.answer, p.recipe.refusal):
            reply.refused = True
            return reply
        records = [p.guard.records[i] for i in context]
        reply.sources = [{"n": n, "source": r.source, "question": r.questions[0]} for n, r in enumerate(records, 1)]
        reply.source = records[0].source
        asked = " ".join(m["content"] for m in messages if m["role"] == "user")
        verdict = check(reply.answer, [(r.questions[0], r.answer) for r in records], asked)
        reply.invented, reply.unsupported = verdict.invented, not verdict.supported
        if not verdict.faithful and p.recipe.grounding.replaces_unfaithful:
            reply.answer, reply.replaced = records[0].answer, True
        return reply

    def _generate(self, p: _Persona, prompt: str, max_new_tokens: int | None, gen, cancel, counts: dict,
                  min_new_tokens: int | None = None) -> Iterator[str]:
        """Text chunks of one reply, generated in a batch with any other replies asked meanwhile."""
        from afinar.assistant.batcher import DONE, Request
        from afinar.assistant.generation import generation_settings

        settings = generation_settings(p.tokenizer, gen, max_new_tokens)
        if min_new_tokens:
            settings["min_new_tokens"] = min_new_tokens
        if self.backend == "llamacpp":
            yield from self._llama[p.name].stream(p.tokenizer, prompt, settings, cancel, counts)
            return
        request = self._batcher.submit(Request(self._adapter_names[p.name], p.tokenizer, prompt, settings, cancel))
        while (chunk := request.out.get()) is not DONE:
            yield chunk
        if request.error is not None:
            raise request.error
        counts.update(prompt=request.prompt_tokens, new=request.new_tokens, truncated=request.truncated)


def resolve_backend(backend: str, log=print) -> str:
    """'auto' -> 'llamacpp' where llama-cpp-python imports, else 'torch' (with a note saying how
    much faster one reply at a time would be, and how to get it); other names unchanged."""
    if backend != "auto":
        return backend
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        from afinar.assistant.llamacpp import INSTALL_HINT

        log(f"engine: torch (llama.cpp answers 2-3x faster one reply at a time on a CPU: {INSTALL_HINT})")
        return "torch"
    return "llamacpp"


def _off_thread(fn, *args, **kwargs):
    """Run `fn` (the guard's embedder) in a thread of its own that ends with it.

    The embedder's parallel regions run on an OpenMP team owned by the calling thread, and a team
    that outlives its work slows the batcher's generation for good. Measured here with the torch
    engine answering after a guard decision: 30.5 tokens/s with the guard in a thread of its own,
    23.7 with the multilingual-e5 guard in the caller's thread (and ~20 against ~30 with the
    earlier MiniLM guard). A thread that ends takes its team with it; the guard still decides in
    p50 ~15-20 ms per question (bench/inference_speed.py)."""
    out: dict = {}

    def run():
        try:
            out["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # raised again in the caller's thread
            out["error"] = exc

    worker = threading.Thread(target=run, name="afinar-guard")
    worker.start()
    worker.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def _index_stamp(run_dir: Path) -> int | None:
    """When the run's saved index was written (one stat per question: microseconds)."""
    from afinar.index.store import GUARD_DIR

    try:
        return (Path(run_dir) / GUARD_DIR / "guard.json").stat().st_mtime_ns
    except OSError:
        return None
