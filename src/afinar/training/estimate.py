"""Memory and time estimates of a recipe's training run, made before anything is loaded.

Used by `afinar doctor` (training/doctor.py) and by the run's automatic settings
(training/runtime.py: gradient checkpointing and micro-batch size when memory requires):
  1. count parameters exactly by building the model on the `meta` device from its config;
  2. memory = frozen weights (bf16, fp32 or ~0.55 bytes/param for NF4) + adapters with AdamW
     states (16 bytes/param) + activations for one micro-batch: ~96*hidden bytes per token per
     layer, ~35*hidden with gradient checkpointing (measured on the embedded model with bf16
     autocast; the textbook 34*hidden (Korthikanti et al. 2022) misses the fp32 upcasts in
     norms, LoRA inputs and the loss);
  3. time = tokens per epoch x ~4N FLOPs per token (LoRA: forward plus the input-gradient half
     of backward; frozen weights need no weight gradients) / this device's measured matmul
     throughput x an efficiency factor seen here (0.35).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from afinar.errors import AfinarError
from afinar.recipes import Recipe

EFFICIENCY = 0.35
GIB = 1024**3


@dataclass
class MemoryEstimate:
    parameters: int
    trainable: int
    weights_bytes: int
    adapter_bytes: int
    activation_bytes: int

    @property
    def peak_bytes(self) -> int:
        return int(1.2 * (self.weights_bytes + self.adapter_bytes + self.activation_bytes))  # 20% allocator slack


def _meta_model(recipe: Recipe):
    from transformers import AutoConfig, AutoModelForCausalLM

    from afinar.models import hub_token, resolve_model_path

    try:
        config = AutoConfig.from_pretrained(resolve_model_path(recipe.base_model), trust_remote_code=recipe.trust_remote_code, token=hub_token())
    except OSError as exc:
        raise AfinarError(f"cannot read the config of {recipe.base_model!r}: {exc}") from None
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=recipe.trust_remote_code)


def estimate_memory(recipe: Recipe, gradient_checkpointing: bool, tokens_per_batch: int | None = None) -> MemoryEstimate:
    """Peak training memory for the recipe's model, method and batch (see module docstring)."""
    model = _meta_model(recipe)
    n = sum(p.numel() for p in model.parameters())
    cfg = model.config
    hidden, layers = cfg.hidden_size, cfg.num_hidden_layers
    targets_per_layer = 7 if recipe.lora.target_modules in ("auto", "all-linear") else max(1, len(recipe.lora.target_modules))
    trainable = layers * targets_per_layer * recipe.lora.r * 2 * hidden
    bytes_per_weight = 0.55 if recipe.quantization == "nf4" else (2 if recipe.train.precision != "fp32" else 4)
    tokens = tokens_per_batch or recipe.train.micro_batch_tokens or 1024
    per_token = (35 if gradient_checkpointing else 96) * hidden * layers
    return MemoryEstimate(n, trainable, int(n * bytes_per_weight), 16 * trainable, tokens * per_token)


def matmul_flops(dtype: torch.dtype = torch.bfloat16, size: int = 1024, seconds: float = 0.5) -> float:
    """Measured dense matmul throughput (FLOP/s) of this device in `dtype`."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        runs += 1
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * size**3 * runs / (time.perf_counter() - start)


def time_per_epoch(recipe: Recipe, tokens_per_epoch: int, flops: float) -> float:
    """Seconds for one epoch of `tokens_per_epoch` tokens at `flops` measured FLOP/s."""
    params = sum(p.numel() for p in _meta_model(recipe).parameters())
    return tokens_per_epoch * 4 * params / max(1.0, flops * EFFICIENCY)
