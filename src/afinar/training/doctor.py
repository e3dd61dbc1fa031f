"""`afinar doctor [RECIPE]`: what this machine can do, and whether a recipe's run will fit.

The environment part reports torch, the device, bf16 support, the bitsandbytes backend and free
memory; for a recipe, peak memory and time per epoch come from `estimate.py`, before anything is
loaded. The seeds fought 4-6 GB GPUs and VMs that ran out of memory: a run that will not fit is
flagged.
"""

from __future__ import annotations

from pathlib import Path

import torch

from afinar.training.estimate import GIB, estimate_memory, matmul_flops, time_per_epoch


def doctor_lines(recipe_path: Path | None, overrides: list[str]) -> list[str]:
    lines = [f"{k:14} {v}" for k, v in environment().items()]
    if recipe_path is None:
        return lines + ["", "Pass a recipe (afinar doctor RECIPE) for memory and time estimates."]
    from afinar.data import check_data
    from afinar.models import load_tokenizer
    from afinar.recipes import load_recipe
    from afinar.training.runtime import available_ram, resolve_setup

    recipe = load_recipe(recipe_path, overrides)
    setup = resolve_setup(recipe)
    est = estimate_memory(recipe, setup.gradient_checkpointing)
    available = torch.cuda.get_device_properties(0).total_memory if setup.device == "cuda" else available_ram()
    lines += ["", f"recipe         {recipe.name}: {recipe.base_model}, {recipe.quantization if recipe.quantization != 'none' else 'LoRA'}, {setup.describe()}",
              f"parameters     {est.parameters / 1e6:.0f}M base, ~{est.trainable / 1e6:.1f}M trainable (LoRA r={recipe.lora.r})",
              f"peak memory    ~{est.peak_bytes / GIB:.1f} GB (weights {est.weights_bytes / GIB:.2f}, adapters+optimizer "
              f"{est.adapter_bytes / GIB:.2f}, activations {est.activation_bytes / GIB:.2f}) of {available / GIB:.1f} GB available"]
    if est.peak_bytes > available:
        lines.append("WARNING        this run will not fit: use quantization: nf4, gradient_checkpointing: on, "
                     "a smaller train.batch_size or train.max_seq_len")
    tokenizer = load_tokenizer(recipe.base_model, recipe.trust_remote_code, recipe.chat_template)
    report = check_data(recipe.data.files, schema=recipe.data.schema_, columns=recipe.data.columns, tokenizer=tokenizer,
                        system_prompt=recipe.system_prompt)
    if report.tokens:
        d = recipe.data
        tokens = report.tokens.total * (1 - d.eval_fraction) * (1 + d.paraphrases) * (1 + d.negatives)
        flops = matmul_flops(setup.weights_dtype if setup.precision != "fp32" else torch.float32)
        seconds = time_per_epoch(recipe, int(tokens), flops)
        lines.append(f"time per epoch ~{seconds / 60:.1f} min for ~{int(tokens)} tokens "
                     f"(measured {flops / 1e12:.2f} TFLOP/s matmul, {recipe.train.epochs:g} epochs: ~{seconds * recipe.train.epochs / 60:.0f} min)")
    return lines


def environment() -> dict[str, str]:
    """Facts about this machine that decide how afinar trains."""
    from afinar.training.runtime import available_ram, cpu_supports_bf16

    info = {"torch": torch.__version__, "device": "cuda" if torch.cuda.is_available() else "cpu"}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = f"{props.name}, {props.total_memory / GIB:.1f} GB, {torch.cuda.device_count()} device(s)"
        info["bf16"] = "yes" if torch.cuda.is_bf16_supported() else "no (fp16 autocast)"
    else:
        info["cpu threads"] = str(torch.get_num_threads())
        info["bf16"] = "yes (AVX-512 BF16/AMX)" if cpu_supports_bf16() else "no (fp32)"
    info["free memory"] = f"{available_ram() / GIB:.1f} GB RAM"
    info["bitsandbytes"] = _bnb_backend()
    return info


def _bnb_backend() -> str:
    try:
        import bitsandbytes as bnb
    except Exception as exc:  # bitsandbytes raises many kinds of errors on unsupported platforms
        return f"not usable ({type(exc).__name__}); QLoRA unavailable"
    backend = "cuda" if torch.cuda.is_available() else "cpu"
    return f"{bnb.__version__} ({backend} backend: NF4 QLoRA available)"
