"""Decisions made before training and the files written after it.

`resolve_setup` turns the recipe's 'auto' settings into concrete ones for this device:
  - precision: bf16 autocast where the device computes bf16 natively (CUDA with bf16, CPUs with
    AVX-512 BF16 or AMX), else fp16 on older GPUs, else fp32; the frozen base is stored in bf16
    when training in bf16 (half the memory, no per-step weight casts);
  - packing: off by default: length-grouped padding measured faster than packing on CPU for
    FAQ-sized examples (see BENCHMARKS.md), because packing's block-diagonal mask costs more
    attention work than the little padding that grouping leaves;
  - gradient checkpointing: only when the memory estimate does not fit.
`preflight` checks the run folder is writable and has room before anything slow happens.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from afinar.errors import AfinarError
from afinar.recipes import Recipe

MIN_FREE_BYTES = 200 * 1024**2  # adapters, checkpoints and the prepared data for small models


@dataclass
class TrainSetup:
    device: str
    precision: str  # bf16 | fp16 | fp32
    packing: bool
    gradient_checkpointing: bool
    micro_batch_tokens: int
    attention: str | None = None  # the base's attention implementation for training (None: the model's default)
    compile: bool = False  # decided once the data and the model are loaded (`decide_compile`)

    @property
    def mixed_precision(self) -> str:
        return {"bf16": "bf16", "fp16": "fp16"}.get(self.precision, "no")

    @property
    def weights_dtype(self) -> torch.dtype:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision, torch.float32)

    def describe(self) -> str:
        return (f"{self.device}, {self.precision}, {'packing' if self.packing else f'length-grouped padding, micro-batches of <={self.micro_batch_tokens} tokens'}"
                f"{', gradient checkpointing' if self.gradient_checkpointing else ''}"
                f"{f', {self.attention} attention' if self.attention else ''}{', compiled layers' if self.compile else ''}")


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 matmuls (AVX-512 BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def device_name() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_setup(recipe: Recipe) -> TrainSetup:
    t = recipe.train
    device = device_name()
    precision = t.precision
    if precision == "auto":
        if device == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            precision = "bf16" if cpu_supports_bf16() else "fp32"
    if precision == "fp16" and device == "cpu":
        raise AfinarError("train.precision: fp16 needs a GPU; use bf16 or fp32 on a CPU")
    packing = t.packing == "on"
    checkpointing = t.gradient_checkpointing == "on" or (t.gradient_checkpointing == "auto" and _needs_checkpointing(recipe, device))
    budget = t.micro_batch_tokens or _auto_micro_batch_tokens(recipe, device, checkpointing)
    # eager attention on CPU: measured ~1.2x faster than SDPA's CPU kernels for training steps
    # (FAQ examples 608 -> 729 tokens/s, 700-token transcripts 422 -> 525; docs/speed.md)
    attention = "eager" if device == "cpu" else None
    return TrainSetup(device, precision, packing, checkpointing, budget, attention)


CPU_MICRO_BATCH_TOKENS = 1024  # measured: CPU tokens/s is flat above ~1k tokens, memory is not


def decide_compile(recipe: Recipe, setup: TrainSetup, model, train_tokens: int) -> bool:
    """`train.compile`: 'auto' compiles on a CPU when the run is long enough to repay a cold
    compilation or the cache is warm for this model; 'on' insists (and says why it cannot)."""
    from afinar.training.compiled import COLD_COMPILE_MIN_TOKENS, WARM_COMPILE_MIN_TOKENS, cache_is_warm, compiler_available

    choice = recipe.train.compile
    if choice == "off":
        return False
    blockers = [why for why, blocked in (
        ("the base is 4-bit (quantization: nf4)", recipe.quantization == "nf4"),
        ("gradient checkpointing is on", setup.gradient_checkpointing),
        ("no C++ compiler was found (install g++)", not compiler_available()),
    ) if blocked]
    if choice == "on":
        if blockers:
            raise AfinarError(f"train.compile: on, but {'; '.join(blockers)}. Set train.compile to auto or off")
        return True
    if blockers or setup.device != "cpu":  # not measured on a GPU: auto leaves it off there
        return False
    return train_tokens >= COLD_COMPILE_MIN_TOKENS or (train_tokens >= WARM_COMPILE_MIN_TOKENS and cache_is_warm(model))


def _auto_micro_batch_tokens(recipe: Recipe, device: str, checkpointing: bool) -> int:
    """1024 tokens on CPU; on a GPU, what 80% of its memory holds after weights and optimizer."""
    if device == "cpu":
        return CPU_MICRO_BATCH_TOKENS
    from afinar.training.estimate import estimate_memory

    try:
        one = estimate_memory(recipe, checkpointing, tokens_per_batch=1)
    except AfinarError:
        return 4096
    free = 0.8 * torch.cuda.get_device_properties(0).total_memory - one.weights_bytes - one.adapter_bytes
    return int(min(32768, max(256, free / max(1, one.activation_bytes))))


def _needs_checkpointing(recipe: Recipe, device: str) -> bool:
    from afinar.training.estimate import estimate_memory

    try:
        est = estimate_memory(recipe, gradient_checkpointing=False)
    except AfinarError:
        return False
    if est is None:
        return False
    available = torch.cuda.get_device_properties(0).total_memory if device == "cuda" else available_ram()
    return est.peak_bytes > 0.8 * available


def available_ram() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 1024**3


def preflight(recipe: Recipe, run_dir: Path, resume: bool) -> None:
    """Refuse to start when the run folder cannot be written or the disk is nearly full."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".afinar-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise AfinarError(f"{run_dir}: cannot write the run folder ({exc.strerror or exc}); "
                          "set train.output_dir to a writable folder") from None
    free = shutil.disk_usage(run_dir).free
    if free < MIN_FREE_BYTES:
        raise AfinarError(f"{run_dir}: only {free / 1024**2:.0f} MB free on this disk; checkpoints need at "
                          f"least {MIN_FREE_BYTES / 1024**2:.0f} MB. Free some space or set train.output_dir elsewhere")
    if not resume:
        for stale in ("metrics.jsonl", "summary.json"):
            (run_dir / stale).unlink(missing_ok=True)
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)


def write_status(run_dir: Path, recipe: Recipe, step: int, total_steps: int, complete: bool) -> None:
    """status.json: where the run stands, read by everything that loads a run (`models.run_incomplete`)."""
    from afinar.io import atomic_write_json
    from afinar.models import STATUS_FILE

    atomic_write_json(run_dir / STATUS_FILE, {"complete": complete, "step": step, "total_steps": total_steps,
                                              "resume": resume_command(recipe)})


def resume_command(recipe: Recipe) -> str:
    return f"afinar train {recipe.source or '<recipe>'} --resume"


def write_outputs(run_dir: Path, recipe: Recipe, metrics: list[dict], state: dict) -> None:
    """summary.json and loss.png; the adapter and the resolved recipe are already in place."""
    from afinar.io import atomic_write_json
    from afinar.training.plots import plot_loss

    plot_loss(metrics, run_dir / "loss.png", f"{recipe.name}: loss")
    summary = {k: state[k] for k in ("step", "tokens", "seconds", "base_eval_loss", "best_eval_loss", "best_step")}
    summary["tokens_per_s"] = round(state["tokens"] / max(state["seconds"], 1e-9), 1)
    summary["adapter"] = "adapter/ (best eval loss)" if state["best_step"] else "adapter/ (last step)"
    atomic_write_json(run_dir / "summary.json", summary)
