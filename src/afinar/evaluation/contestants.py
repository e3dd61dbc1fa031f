"""The models `afinar eval` compares: a run's adapter, the bare base model, another run, or any
OpenAI-compatible endpoint. Each answers a list of eval items (`answers`) and, when it is a local
model, measures its loss on the held-out split (`eval_loss`).

Local models answer in left-padded batches sorted by length (`generate_batch`): on CPU a batch
of 16 costs about two single answers. The base model is the run's model with its adapter
disabled, so it is loaded once.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import time
import urllib.error
import urllib.request
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

from afinar.chat_template import render_prompt, with_context
from afinar.errors import AfinarError
from afinar.evaluation.probe import EvalItem

ENDPOINT_KEY_VARS = ("AFINAR_ENDPOINT_API_KEY", "OPENAI_API_KEY")
ENDPOINT_TIMEOUT = 120  # seconds per request


@dataclass
class LocalModel:
    """A peft model with one adapter active (or none: the base model)."""

    name: str  # how the report labels it: "tuned", "base", or a run name
    label: str  # a longer description for the report
    model: object  # peft.PeftModel
    tokenizer: object
    recipe: object  # the recipe whose system prompt and decoding it uses
    adapter: str | None  # peft adapter name; None: every adapter disabled
    grounded: bool = False  # answers with each item's records in the prompt

    @contextmanager
    def active(self):
        """The model answering with this contestant's adapter, through merged copies of its
        layers on CPU (assistant/weights.py), else peft's modules."""
        from afinar.assistant.weights import AnswerWeights

        weights = AnswerWeights(self.model)
        if weights.use(self.adapter):
            try:
                yield
            finally:
                weights.release()
        elif self.adapter is None:
            with self.model.disable_adapter():
                yield
        else:
            self.model.set_adapter(self.adapter)
            yield

    def answers(self, items: list[EvalItem], max_new_tokens: int, batch_size: int, bar=None) -> list[str]:
        """Greedy replies to every item, in the items' order (the recipe's repetition penalty, but
        never sampling: an eval must give the same answers each time it runs). Batches are of
        prompts of similar length (records included), so little is padded."""
        from afinar.assistant.generation import generate_batch

        gen = self.recipe.generation.model_copy(update={"temperature": 0.0})
        contexts = [it.context if self.grounded else None for it in items]
        lengths = [len(self.tokenizer(render_prompt(self.tokenizer, with_context(it.messages, self.recipe.system_prompt, c)),
                                      add_special_tokens=False)["input_ids"]) for it, c in zip(items, contexts)]
        order = sorted(range(len(items)), key=lambda i: (lengths[i], i))
        out: list[str] = [""] * len(items)
        with self.active():
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                texts = generate_batch(self.model, self.tokenizer, [items[i].messages for i in chunk],
                                       self.recipe.system_prompt, gen, max_new_tokens, [contexts[i] for i in chunk])
                for i, text in zip(chunk, texts):
                    out[i] = text
                if bar is not None:
                    bar.update(len(chunk))
        return out

    def eval_loss(self, examples, batch_size: int, contexts: list | None = None) -> float:
        """Mean cross-entropy per answer token on `examples` (prepared conversations), computed as
        during training: answer tokens only, this model's system prompt, records and chat template."""
        import torch

        from afinar.chat_template import encode_chat, with_context
        from afinar.training.loss import AnswerOnlyLM, eval_loss

        contexts = contexts if self.grounded and contexts else [None] * len(examples)
        encoded = [encode_chat(self.tokenizer, with_context(ex.messages, self.recipe.system_prompt, c))
                   for ex, c in zip(examples, contexts)]
        encoded = [e for e in encoded if e.n_label_tokens]
        if not encoded:
            raise AfinarError("the held-out split has no answer tokens to measure a loss on")
        device = self.model.device
        dtype = next(self.model.get_base_model().parameters()).dtype
        autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
        with self.active(), autocast:
            return eval_loss(AnswerOnlyLM(self.model), encoded, self.tokenizer.pad_token_id, batch_size, device)


@dataclass
class Endpoint:
    """An OpenAI-compatible chat completions API (`--endpoint URL --model NAME`)."""

    url: str  # the API base (http://host:port/v1) or the full .../chat/completions URL
    model_name: str
    system_prompt: str
    max_retries: int = 2

    @property
    def name(self) -> str:
        return self.model_name

    @property
    def label(self) -> str:
        return f"{self.model_name} at {self.url}"

    @property
    def completions_url(self) -> str:
        url = self.url.rstrip("/")
        return url if url.endswith("/chat/completions") else url + "/chat/completions"

    def answers(self, items: list[EvalItem], max_new_tokens: int, batch_size: int, bar=None) -> list[str]:
        out = []
        for item in items:
            out.append(self._complete(item.messages, max_new_tokens))
            if bar is not None:
                bar.update(1)
        return out

    def eval_loss(self, examples, batch_size: int, contexts: list | None = None) -> float | None:
        return None  # a chat API gives no token log-likelihoods to compare

    def _complete(self, messages: list[dict[str, str]], max_new_tokens: int) -> str:
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        body = {"model": self.model_name, "messages": system + messages, "max_tokens": max_new_tokens,
                "temperature": 0, "stream": False}
        attempt = 0
        while True:
            try:
                return _read_reply(self._post(body), self.completions_url)
            except (OSError, http.client.HTTPException) as exc:  # URLError, timeouts, dropped connections
                busy = isinstance(exc, urllib.error.HTTPError) and exc.code in (429, 500, 502, 503)
                if not busy or attempt == self.max_retries:
                    raise AfinarError(_endpoint_problem(self.completions_url, exc)) from None
                attempt += 1
                time.sleep(2**attempt)  # a busy server: back off, then ask again

    def _post(self, body: dict) -> dict:
        headers = {"Content-Type": "application/json"}
        key = next((os.environ[v] for v in ENDPOINT_KEY_VARS if os.environ.get(v)), None)
        if key:  # from the environment only; never logged or written to the report
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(self.completions_url, json.dumps(body).encode(), headers, method="POST")
        with urllib.request.urlopen(request, timeout=ENDPOINT_TIMEOUT) as response:
            try:
                return json.loads(response.read().decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise AfinarError(f"{self.completions_url}: the reply is not JSON; is this an OpenAI-compatible API?") from None


def _read_reply(data: dict, url: str) -> str:
    try:
        return (data["choices"][0]["message"]["content"] or "").strip()
    except (KeyError, IndexError, TypeError):
        raise AfinarError(f"{url}: the reply has no choices[0].message.content; is this an OpenAI-compatible "
                          "chat completions API?") from None


def _endpoint_problem(url: str, exc: Exception) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        if exc.code in (401, 403):
            return (f"{url}: the endpoint refused the request (HTTP {exc.code}); set its key in "
                    f"{' or '.join(ENDPOINT_KEY_VARS)}")
        return f"{url}: HTTP {exc.code} {exc.reason}; check --endpoint and --model"
    reason = getattr(exc, "reason", exc)
    return f"cannot reach {url} ({reason}); is the server running, and is --endpoint its base URL (e.g. http://127.0.0.1:8000/v1)?"


def perplexity(loss: float | None) -> float | None:
    return None if loss is None else round(math.exp(min(loss, 50.0)), 3)
