"""The text `afinar doctor` prints: environment, then the recipe's memory and time estimates."""

from __future__ import annotations

from pathlib import Path

import torch

from afinar.doctor import GIB, environment, estimate_memory, matmul_flops, time_per_epoch


def doctor_lines(recipe_path: Path | None, overrides: list[str]) -> list[str]:
    lines = [f"{k:14} {v}" for k, v in environment().items()]
    if recipe_path is None:
        return lines + ["", "Pass a recipe (afinar doctor RECIPE) for memory and time estimates."]
    from afinar.data import check_data
    from afinar.models import load_tokenizer
    from afinar.recipe import load_recipe
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
