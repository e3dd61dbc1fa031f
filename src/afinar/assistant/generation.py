"""Load a trained assistant and generate answers with the chat template it was trained with.

`load_run(run_dir)` returns the base model with the run's adapter, the tokenizer saved with the
adapter (so the chat template is the trained one) and the resolved recipe. `generate_answer`
renders the conversation with `render_prompt`, decodes greedily by default (the recipe's
`generation` settings), stops at the template's end-of-turn token and uses the KV cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from afinar.chat_template import render_prompt, with_context, with_system
from afinar.models import ADAPTER_FOR_INFERENCE, left_padded, read_run
from afinar.recipes import GenerationConfig, Recipe


@dataclass
class LoadedRun:
    model: object  # peft.PeftModel
    tokenizer: object
    recipe: Recipe
    run_dir: Path


def load_run(run_dir: str | Path) -> LoadedRun:
    """The run's base model with its adapter, both in bf16 where the CPU supports it."""
    from peft import PeftModel

    from afinar.training.lora import load_base
    from afinar.training.runtime import resolve_setup

    recipe, tokenizer, adapter = read_run(run_dir)
    setup = resolve_setup(recipe)
    base = load_base(recipe, setup.weights_dtype, setup.device)
    base.config.use_cache = True
    model = PeftModel.from_pretrained(base, adapter, **ADAPTER_FOR_INFERENCE)
    model.eval()
    return LoadedRun(model, tokenizer, recipe, Path(run_dir))


def generation_inputs(model, tokenizer, messages: list[dict[str, str]], system_prompt: str | None,
                      gen: GenerationConfig, max_new_tokens: int | None = None) -> tuple[dict, dict]:
    """(model inputs, generate() settings) for the next reply to `messages`."""
    prompt = render_prompt(tokenizer, with_system(messages, system_prompt))
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(model.device)
    return dict(inputs), generation_settings(tokenizer, gen, max_new_tokens)


def generation_settings(tokenizer, gen: GenerationConfig, max_new_tokens: int | None = None) -> dict:
    """generate() settings: the recipe's decoding (greedy when temperature is 0), the KV cache,
    and a stop at the trained template's end-of-turn token."""
    sample = gen.temperature > 0
    return {
        "max_new_tokens": max_new_tokens or gen.max_new_tokens, "do_sample": sample,
        "temperature": gen.temperature if sample else None, "top_p": gen.top_p if sample else None,
        "repetition_penalty": gen.repetition_penalty, "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id, "use_cache": True,
    }


@torch.no_grad()
def generate_answer(model, tokenizer, messages: list[dict[str, str]], system_prompt: str | None,
                    gen: GenerationConfig, max_new_tokens: int | None = None) -> str:
    """The assistant's next reply to `messages` (stops at the end-of-turn token)."""
    return generate_batch(model, tokenizer, [messages], system_prompt, gen, max_new_tokens)[0]


@torch.no_grad()
def generate_batch(model, tokenizer, conversations: list[list[dict[str, str]]], system_prompt: str | None,
                   gen: GenerationConfig, max_new_tokens: int | None = None,
                   contexts: list[list[tuple[str, str]]] | None = None) -> list[str]:
    """The next reply to each conversation, generated together in one left-padded batch;
    `contexts[i]`: the (question, answer) records conversation i is grounded on.

    On CPU a batch of 16 answers takes about as long as two single ones (measured on the embedded
    model: 238 vs 32 new tokens/s), which is what makes `afinar eval` affordable on a laptop.
    """
    contexts = contexts or [None] * len(conversations)
    prompts = [render_prompt(tokenizer, with_context(m, system_prompt, c)) for m, c in zip(conversations, contexts)]
    inputs = left_padded(tokenizer, prompts).to(model.device)
    settings = generation_settings(tokenizer, gen, max_new_tokens)
    if not settings["do_sample"]:
        new = greedy_generate(model, inputs["input_ids"], inputs["attention_mask"], settings["max_new_tokens"],
                              tokenizer.eos_token_id, gen.repetition_penalty)
    else:
        out = model.generate(**inputs, **settings)
        new = out[:, inputs["input_ids"].shape[1]:]
    return [text.strip() for text in tokenizer.batch_decode(new, skip_special_tokens=True)]


@torch.no_grad()
def greedy_generate(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int, eos_id: int,
                    repetition_penalty: float = 1.0) -> list[list[int]]:
    """Greedy decoding of a left-padded batch that drops each row once it has ended.

    Written here because `generate()` computes every row until the longest reply ends: in an eval
    batch of long explanations and short refusals most of that work is thrown away. The tokens are
    generate()'s (do_sample=False, the same repetition penalty, applied like transformers' processor
    over the prompt as passed, padding included): a test compares them. Returns each row's new
    tokens, without the end-of-turn token.
    """
    cache = {cache_keyword(model): growing_cache(max_new_tokens)}
    active = torch.arange(input_ids.shape[0], device=input_ids.device)
    seen, mask = input_ids, attention_mask
    positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)
    logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                   logits_to_keep=1, **cache).logits[:, -1, :].float()
    out: list[list[int]] = [[] for _ in range(input_ids.shape[0])]
    for step in range(max_new_tokens):
        if repetition_penalty != 1.0:
            score = torch.gather(logits, 1, seen)
            logits = logits.scatter(1, seen, torch.where(score < 0, score * repetition_penalty, score / repetition_penalty))
        token = logits.argmax(-1)
        going = token != eos_id
        for row, t, g in zip(active.tolist(), token.tolist(), going.tolist()):
            if g:
                out[row].append(t)
        if step == max_new_tokens - 1 or not going.any():
            break
        if not going.all():  # drop the rows that ended, from the cache too
            keep = going.nonzero().squeeze(1)
            next(iter(cache.values())).batch_select_indices(keep)
            active, seen, mask, token, positions = active[keep], seen[keep], mask[keep], token[keep], positions[keep]
        seen = torch.cat([seen, token[:, None]], dim=1)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        positions = positions[:, -1:] + 1
        logits = model(input_ids=token[:, None], attention_mask=mask, position_ids=positions, use_cache=True,
                       logits_to_keep=1, **cache).logits[:, -1, :].float()
    return out


def growing_cache(room: int):
    """A KV cache like transformers' DynamicCache whose layers keep their keys and values in
    buffers with `room` tokens to spare, so that each decoding step writes its token in place.

    Written here because DynamicCache appends with torch.cat, copying every layer's whole cache at
    every step: 17% of an eval decoding step here (demo run, batch 8, 400-token prompts, bf16;
    24% with the adapter merged). The layers hand attention views of the same values, so it
    computes the same numbers (a test compares the tokens with DynamicCache's)."""
    from transformers.cache_utils import Cache, DynamicLayer

    class GrowingLayer(DynamicLayer):
        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
                self.length, self.buffers = 0, None
            n, add = self.length, key_states.shape[-2]
            if self.buffers is None or n + add > self.buffers[0].shape[-2]:
                grown = []
                for old, new in zip(self.buffers or (None, None), (key_states, value_states)):
                    buf = new.new_empty(*new.shape[:-2], n + add + max(room, add), new.shape[-1])
                    if n:
                        buf[..., :n, :] = old[..., :n, :]
                    grown.append(buf)
                self.buffers = grown
            keys, values = self.buffers
            keys[..., n : n + add, :] = key_states
            values[..., n : n + add, :] = value_states
            self.length = n + add
            self.keys, self.values = keys[..., : self.length, :], values[..., : self.length, :]
            return self.keys, self.values

        def batch_select_indices(self, indices):
            if self.is_initialized and self.length:
                self.buffers = [b[indices, ...] for b in self.buffers]
                self.keys, self.values = (b[..., : self.length, :] for b in self.buffers)

        def crop(self, tokens_to_remove: int) -> None:
            super().crop(tokens_to_remove)
            if self.is_initialized and tokens_to_remove < 0:
                self.length = self.keys.shape[-2]

        def reset(self) -> None:
            super().reset()
            self.length, self.buffers = 0, None

    return Cache(layer_class_to_replicate=GrowingLayer)


def cache_keyword(model) -> str:
    """transformers 5.24 renamed forward's `past_key_values` to `cache` (the old name goes in 5.40)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(type(base).forward).parameters else "past_key_values"
