"""The weights a peft model answers with on CPU: each adapted layer gets one matrix holding its
base weight with the active adapter merged in, and bf16 matrices are packed for oneDNN.

Why (`python bench/decode_weights.py`, embedded model, bf16, an Intel Xeon with AMX, 2 cores;
docs/speed.md): peft answers with the base weight and the adapter apart, so each of the 210
adapted layers runs three matmuls and a few elementwise ops per token; and torch's bf16 `linear`
re-lays the weight out for oneDNN's kernels at every call, which for one row of input costs
more than the product itself (576 x 1536: 89 us plain, 41 us with the weight packed once).
Written here because neither peft nor transformers packs weights for eager CPU inference
(torch.compile with inductor's freezing does, at ~45 s of compilation per shape).

How:
  1. `AnswerWeights(model).use(adapter)` (None: the base model alone) computes, for every
     adapted layer, W + scaling * B @ A in fp32 from the untouched base weight (for a 4-bit base,
     W as bitsandbytes' kernel multiplies by it) and rounds it once to the base's dtype; in bf16
     every other linear layer (the output layer, unadapted projections) is packed too;
  2. each such layer is swapped, in its parent module, for an `AnsweringLinear` holding that
     matrix; the model's own modules and base weights are never modified, so switching adapters
     (`use` again) never drifts the base by rounding, as peft's merge/unmerge would in bf16;
  3. `release()` puts the original modules back (before an adapter is loaded, or training).
In bf16 a merged weight is rounded where peft rounds the two products apart: on a trained run
the logits lie about as far from the adapter computed in fp32 as peft's bf16 modules do (the
benchmark prints both). Where the copies would not fit in memory, on a GPU, or for DoRA /
fan-in-fan-out layers, peft's own modules answer as before. For answering only: the packed
product has no gradient.
"""

from __future__ import annotations

import torch

# Copies are made only while they take at most this share of the memory available now.
MEMORY_SHARE = 0.5


def _pack(matrix: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(matrix.contiguous(), 1)


class AnsweringLinear(torch.nn.Module):
    """A linear layer for answering: one matrix (the adapter merged in), packed for oneDNN where bf16."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, original: torch.nn.Module):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.bias = bias
        self.packed = weight.dtype == torch.bfloat16
        self.matrix = _pack(weight) if self.packed else weight
        self.original = [original]  # kept out of the module tree (not a submodule)

    @property
    def weight(self) -> torch.Tensor:  # for code that reads a layer's dtype or shape
        layer = self.original[0]
        return layer.get_base_layer().weight if hasattr(layer, "get_base_layer") else layer.weight

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.packed:
            return torch.ops.mkldnn._linear_pointwise(x, self.matrix, self.bias, "none", [], "")
        return torch.nn.functional.linear(x, self.matrix, self.bias)


class AnswerWeights:
    """Which adapter a model answers with, through merged (and packed) copies of its layers."""

    def __init__(self, model):
        self.model = model
        self.active: str | None = None
        self._swaps: list[tuple[torch.nn.Module, str, torch.nn.Module]] = []  # (parent, name, original)

    def use(self, adapter: str | None) -> bool:
        """Answer with `adapter` (None: the base alone). False where copies are not made: the
        caller then answers with peft's modules (set_adapter / disable_adapter)."""
        if self._swaps and adapter == self.active:
            return True
        self.release()
        plan = _plan(self.model, adapter)
        if plan is None:
            return False
        for parent, name, original, weight, bias in plan:
            setattr(parent, name, AnsweringLinear(weight, bias, original))
            self._swaps.append((parent, name, original))
        self.active = adapter
        return True

    def release(self) -> None:
        """The model's own modules back in place."""
        for parent, name, original in reversed(self._swaps):
            setattr(parent, name, original)
        self._swaps = []


def _plan(model, adapter: str | None) -> list | None:
    """(parent, child name, layer, weight, bias) for each layer to swap, or None."""
    layers = list(_linear_layers(model))
    if not layers or any(p.device.type != "cpu" for p in model.parameters()):
        return None
    dtype = next(p.dtype for p in model.get_base_model().parameters() if p.is_floating_point())
    if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return None
    # an fp32 layer without adapter gains nothing from a copy; the size is checked before any is made
    chosen = [(parent, name, child) for parent, name, child in layers
              if _is_lora(child) or dtype == torch.bfloat16 or _quantized(child.weight)]
    size = sum(_base(child).in_features * _base(child).out_features for _, _, child in chosen)
    if size * torch.tensor([], dtype=dtype).element_size() > MEMORY_SHARE * _available_memory():
        return None
    plan = []
    for parent, name, child in chosen:
        weight = _answering_weight(child, adapter, dtype)
        if weight is None:
            return None
        bias = _base(child).bias
        plan.append((parent, name, child, weight, None if bias is None else bias.detach()))
    return plan


def _linear_layers(parent):
    """(parent, name, layer) for every LoRA layer and plain linear layer, not looking inside LoRA layers."""
    for name, child in parent.named_children():
        if _is_lora(child) or _is_linear(child):
            yield parent, name, child
        else:
            yield from _linear_layers(child)


def _is_linear(module) -> bool:
    """torch's own linear layer, or bitsandbytes' 4-bit one (a subclass)."""
    return type(module) is torch.nn.Linear or (isinstance(module, torch.nn.Linear) and _quantized(module.weight))


def _quantized(weight) -> bool:
    return getattr(weight, "quant_state", None) is not None


def _is_lora(module) -> bool:
    return hasattr(module, "lora_A") and hasattr(module, "get_base_layer")


def _base(layer):
    return layer.get_base_layer() if _is_lora(layer) else layer


def _answering_weight(layer, adapter: str | None, dtype: torch.dtype) -> torch.Tensor | None:
    """The layer's weight with `adapter` merged, computed in fp32 and rounded once to `dtype`;
    None where it cannot be merged here."""
    weight = _dequantized(_base(layer), dtype)
    if weight is None or not _is_lora(layer) or adapter is None or adapter not in layer.lora_A:
        return weight
    if adapter in getattr(layer, "lora_variant", {}) or getattr(layer, "fan_in_fan_out", False):
        return None  # DoRA and friends merge differently; peft's own modules answer
    a, b = layer.lora_A[adapter].weight.detach(), layer.lora_B[adapter].weight.detach()
    delta = (b.float() @ a.float()) * layer.scaling[adapter]  # peft's get_delta_weight, in fp32
    return (weight.float() + delta).to(dtype)


def _dequantized(base, dtype: torch.dtype) -> torch.Tensor | None:
    """A layer's weight as the matrix its own kernel multiplies by, in `dtype`."""
    weight = base.weight
    if _quantized(weight):
        # bitsandbytes re-lays a 4-bit weight out for its CPU kernel at the first forward, after
        # which dequantize_4bit no longer reads it right; its own product with the identity gives
        # every weight exactly as that kernel uses it (one nonzero term per sum), in any layout.
        import bitsandbytes as bnb

        eye = torch.eye(base.in_features, dtype=dtype)
        return bnb.matmul_4bit(eye, weight, bias=None, quant_state=weight.quant_state).t().contiguous()
    if not weight.is_floating_point():  # int8 or another format this does not read
        return None
    return weight.detach().to(dtype)


def _available_memory() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62  # not Linux: no limit known
