"""`afinar export RUN --to merged`: the adapter merged into a standalone safetensors model.

The field's most reported export failure is a merged model that outputs garbage, usually from
merging into 4-bit weights or from losing the chat template. Here:
  1. the base model is loaded unquantised (fp32), also for QLoRA runs: the adapter is merged into
     dequantised weights, never into the 4-bit ones;
  2. the run's adapter is applied, and the logits of a few prompts rendered with the trained chat
     template are kept as the reference (base + adapter, unmerged);
  3. peft merges and unloads the adapter; the same prompts' logits must match the reference within
     MERGE_TOLERANCE (max abs difference relative to the logits' scale), or the export fails;
  4. the model (safetensors), the tokenizer and its chat template are written to a temporary
     folder and renamed into place, with a verification record (export.json).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from afinar.errors import AfinarError

MERGE_TOLERANCE = 1e-4  # max |merged - unmerged| / max |unmerged| over the check prompts (fp32)
CHECK_PROMPTS = ["¿Qué es una pila?", "Explain binary search in one sentence.", "Hola, ¿en qué me puedes ayudar?"]


@dataclass
class MergeCheck:
    prompts: int
    max_abs_diff: float
    relative_diff: float
    tolerance: float
    same_next_tokens: bool

    def describe(self) -> str:
        return (f"merged logits match base + adapter on {self.prompts} prompts: max |diff| {self.max_abs_diff:.2e} "
                f"({self.relative_diff:.2e} of the logits' scale; tolerance {self.tolerance:.0e}), "
                f"same greedy next token everywhere: {self.same_next_tokens}")


def export_merged(run_dir: str | Path, out: str | Path, log=print) -> tuple[Path, MergeCheck]:
    """Merge a run's adapter into its (dequantised) base and save it; returns (folder, check)."""
    from peft import PeftModel

    from afinar.models import read_run
    from afinar.io import atomic_dir
    from afinar.training.lora import load_base

    recipe, tokenizer, adapter = read_run(run_dir)
    if recipe.quantization == "nf4":
        log("QLoRA run: merging into the dequantised base (fp32), not into its 4-bit weights")
    base = load_base(recipe.model_copy(update={"quantization": "none"}), torch.float32, "cpu")  # 1.
    model = PeftModel.from_pretrained(base, adapter).eval()
    batch = _check_batch(tokenizer, recipe.system_prompt)
    with torch.no_grad():
        reference = model(**batch).logits  # 2.
        merged = model.merge_and_unload()  # 3.
        check = _compare(reference, merged(**batch).logits, batch["attention_mask"])
    if check.relative_diff > MERGE_TOLERANCE:
        raise AfinarError(f"the merged model does not match base + adapter: {check.describe()}; nothing was written")
    out = Path(out)
    with atomic_dir(out) as tmp:  # 4.
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "export.json").write_text(json.dumps({"kind": "merged", "run": str(run_dir), "base_model": recipe.base_model,
                                                     "check": asdict(check)}, indent=2) + "\n")
    return out, check


def _check_batch(tokenizer, system_prompt: str) -> dict:
    from afinar.chat_template import render_prompt, with_system

    from afinar.models import left_padded

    prompts = [render_prompt(tokenizer, with_system([{"role": "user", "content": p}], system_prompt)) for p in CHECK_PROMPTS]
    return dict(left_padded(tokenizer, prompts))


def _compare(reference: torch.Tensor, merged: torch.Tensor, mask: torch.Tensor) -> MergeCheck:
    keep = mask.bool()
    ref, got = reference[keep].float(), merged[keep].float()
    diff = (ref - got).abs().max().item()
    scale = ref.abs().max().item() or 1.0
    return MergeCheck(len(mask), diff, diff / scale, MERGE_TOLERANCE, bool((ref.argmax(-1) == got.argmax(-1)).all()))
