"""Compile the decoder layers for CPU training (torch.compile, regional).

On a CPU most of a LoRA step that is not a large matmul is small elementwise work (norms,
rotary embeddings, activations, the adapters' scaling, dtype casts), one kernel and one Python
call at a time. Compiling each decoder layer fuses that work into a few C++ loops. All layers
share one compiled graph (they run the same code), compiled with dynamic shapes so that batches
of any length reuse it. Measured on the embedded model (2-core AVX-512 BF16 CPU, eager attention,
steady state): 828 -> 982 tokens/s on FAQ examples, 525 -> 621 on 700-token chat transcripts;
bench/train_scaling.py measures whole epochs, compilation included.

The first compilation on a machine takes ~50 s for the embedded model; inductor caches its code
under afinar's cache folder, and later runs find it there, but dynamo still traces the layers at
every start (6-17 s). `train.compile: auto` turns it on when a run is long enough to repay that:
250k training tokens with a cold cache, 60k once the cache is warm for this model (a stamp
written after the first compiled step that succeeded); shorter runs stay eager.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch

from afinar.models import cache_dir

# below these many training tokens (all epochs) compiling costs more than it saves here: it saves
# ~0.2 ms per token (FAQ examples: 828 -> 982 tokens/s; 700-token transcripts: 525 -> 621) against
# ~50 s for a cold compilation and 6-17 s of tracing at every start with a warm cache
COLD_COMPILE_MIN_TOKENS = 250_000
WARM_COMPILE_MIN_TOKENS = 60_000


def inductor_cache() -> Path:
    """Where inductor keeps compiled code: afinar's cache (which survives reboots, unlike torch's
    default under /tmp), unless the user pointed TORCHINDUCTOR_CACHE_DIR elsewhere. torch writes
    its default into that variable as soon as inductor is imported, so the default does not count."""
    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:  # another torch layout: trust the variable
        return Path(current) if current else cache_dir() / "inductor"
    if current and os.path.abspath(current) != os.path.abspath(default_cache_dir()):
        return Path(current)
    return cache_dir() / "inductor"


def compiler_available() -> bool:
    """inductor builds its CPU kernels with the system's C++ compiler."""
    return any(shutil.which(c) for c in ("g++", "c++", "clang++"))


def _stamp(model) -> Path:
    config = model.config.to_dict() if hasattr(model.config, "to_dict") else {}
    key = json.dumps({"torch": torch.__version__, "config": config}, sort_keys=True, default=str)
    return inductor_cache() / "afinar-warm" / hashlib.sha256(key.encode()).hexdigest()[:16]


def cache_is_warm(model) -> bool:
    return _stamp(model).exists()


def mark_warm(model) -> None:
    stamp = _stamp(model)
    try:
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(torch.__version__)
    except OSError:  # a read-only cache only costs the next run a cold compilation
        pass


def decoder_layers(model) -> torch.nn.ModuleList | None:
    """The repeated decoder blocks of a (peft-wrapped) causal LM, or None when not found."""
    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = getattr(causal, causal.base_model_prefix, None)
    layers = getattr(decoder, "layers", None)
    if isinstance(layers, torch.nn.ModuleList) and len(layers):
        return layers
    n = getattr(causal.config, "num_hidden_layers", None)
    return next((m for m in causal.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == n), None)


def compile_layers(model) -> int:
    """Compile every decoder layer in place (state-dict keys unchanged); returns how many."""
    import torch._dynamo

    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(inductor_cache())
    torch._dynamo.config.suppress_errors = True  # a graph that fails to compile runs eagerly instead
    layers = decoder_layers(model)
    if layers is None:
        return 0
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)
