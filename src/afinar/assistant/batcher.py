"""Dynamic batching for the engine: replies requested at the same time are generated together.

On CPU one forward pass over 16 sequences costs little more than over one (measured on the
embedded model: 238 vs 32 new tokens/s), so when several clients wait, generating their replies
as one left-padded batch cuts their wait several times. The batcher runs one worker thread:
  1. wait for a request; take it and every other waiting request that can share its batch (same
     adapter, same decoding settings), up to `max_batch`;
  2. generate them together; a streamer hands each row's new tokens, decoded, to its request's
     queue as they come, so every client still sees its own reply stream;
  3. each row stops on its own: end of turn, its own `max_new_tokens`, or its client's cancel
     event (a client that went away); requests that arrive meanwhile form the next batch.
With one client this is exactly the one-at-a-time generation it replaces.
On CPU the model answers through `weights.AnswerWeights`: the batch's adapter merged into a copy
of each adapted layer (bf16 ones packed for oneDNN), so a decoding step costs one matmul per
layer (docs/speed.md); a batch for another adapter rebuilds the copies, and the base weights
themselves are never touched. Where no copies are made (a GPU, too little memory), peft's own
modules answer with the batch's adapter set.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field

import torch

from afinar.assistant.weights import AnswerWeights

DONE = object()  # the end of a request's stream
IDLE_SECONDS = 10.0  # the worker thread ends after this long without requests


@dataclass
class Request:
    """One reply to generate; chunks of text (then DONE) arrive on `out`."""

    adapter: str
    tokenizer: object
    prompt: str
    settings: dict  # generate() settings: max_new_tokens, sampling, eos/pad ids
    cancel: threading.Event | None = None
    out: queue.Queue = field(default_factory=queue.Queue)
    prompt_tokens: int = 0
    new_tokens: int = 0
    truncated: bool = False
    error: BaseException | None = None

    def key(self) -> tuple:
        """Requests with equal keys can share a batch."""
        s = self.settings
        return (self.adapter, id(self.tokenizer), s["do_sample"], s["temperature"], s["top_p"], s["repetition_penalty"],
                s.get("min_new_tokens"))


class Batcher:
    """Owns the model while generating; `submit` from any thread, read the request's `out`."""

    def __init__(self, model, max_batch: int = 16):
        self.model, self.max_batch = model, max_batch
        self.lock = threading.Lock()  # held while the model generates (and while adapters load)
        self._waiting: list[Request] = []
        self._cv = threading.Condition()
        self._worker: threading.Thread | None = None
        self.weights = AnswerWeights(model)

    def submit(self, request: Request) -> Request:
        with self._cv:
            self._waiting.append(request)
            if self._worker is None:
                self._worker = threading.Thread(target=self._loop, name="afinar-batcher", daemon=True)
                self._worker.start()
            self._cv.notify()
        return request

    def _loop(self) -> None:
        while True:
            with self._cv:
                if not self._waiting:
                    self._cv.wait(timeout=IDLE_SECONDS)
                if not self._waiting:  # idle: end the thread (the next submit starts another), so an
                    self._worker = None  # engine that is no longer used can be freed
                    return
                first = self._waiting[0]
                batch = [r for r in self._waiting if r.key() == first.key()][: self.max_batch]
                self._waiting = [r for r in self._waiting if all(r is not b for b in batch)]
            try:
                self._generate(batch)
            except Exception as exc:  # every client of the batch hears of it
                for r in batch:
                    r.error = exc
            finally:
                for r in batch:
                    r.out.put(DONE)

    @torch.no_grad()
    def _generate(self, batch: list[Request]) -> None:
        from afinar.assistant.generation import cache_keyword, growing_cache
        from afinar.models import left_padded

        tokenizer = batch[0].tokenizer
        inputs = left_padded(tokenizer, [r.prompt for r in batch])
        for r, mask in zip(batch, inputs["attention_mask"]):
            r.prompt_tokens = int(mask.sum())
        width = inputs["input_ids"].shape[1]
        rows = _Rows(batch, tokenizer, width)
        settings = {**batch[0].settings, "max_new_tokens": max(r.settings["max_new_tokens"] for r in batch)}
        with self.lock:
            self._use(batch[0].adapter)
            self.model.generate(**inputs.to(self.model.device), **settings, streamer=rows,
                                stopping_criteria=[rows.criterion],
                                **{cache_keyword(self.model): growing_cache(settings["max_new_tokens"])})

    def _use(self, adapter: str) -> None:
        """Make `adapter` the one the model answers with (the lock is held)."""
        if not self.weights.use(adapter):
            self.model.set_adapter(adapter)

    def release(self) -> None:
        """The model's own modules back in place (before another adapter loads)."""
        self.weights.release()


class _Rows:
    """Streamer and stopping criterion of one batch: each row's tokens go to its own request."""

    def __init__(self, batch: list[Request], tokenizer, prompt_width: int):
        self.batch, self.tokenizer, self.width = batch, tokenizer, prompt_width
        eos = batch[0].settings.get("eos_token_id")
        self.eos = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
        self.ids: list[list[int]] = [[] for _ in batch]
        self.sent = [""] * len(batch)
        self.stop_at = [r.settings["max_new_tokens"] for r in batch]  # tokens each row may keep
        self.prompt_seen = False

    def criterion(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        """Stop a row at its own limit or when its client cancels (generate() pads it afterwards)."""
        made = input_ids.shape[1] - self.width
        done = []
        for i, r in enumerate(self.batch):
            if r.cancel is not None and r.cancel.is_set():
                self.stop_at[i] = min(self.stop_at[i], made)
            done.append(made >= self.stop_at[i])
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    def put(self, value) -> None:
        if not self.prompt_seen:  # generate() first hands over the prompt itself
            self.prompt_seen = True
            return
        for i, token in enumerate(value.reshape(len(self.batch), -1)[:, -1].tolist()):
            ids, r = self.ids[i], self.batch[i]
            if len(ids) >= self.stop_at[i] or (ids and ids[-1] in self.eos):
                continue  # this row has finished; generate() pads it
            ids.append(token)
            r.new_tokens = len(ids)
            if token in self.eos:
                continue
            r.truncated = len(ids) >= r.settings["max_new_tokens"]
            self._emit(i)

    def _emit(self, i: int, final: bool = False) -> None:
        text = self.tokenizer.decode(self.ids[i], skip_special_tokens=True)
        if text.endswith("\ufffd") and not final:  # half of a multi-byte character: wait for the rest
            return
        if len(text) > len(self.sent[i]):
            self.batch[i].out.put(text[len(self.sent[i]):])
            self.sent[i] = text

    def end(self) -> None:
        """Flush what each row held back (a reply may end in bytes that never became a character)."""
        for i in range(len(self.batch)):
            self._emit(i, final=True)
