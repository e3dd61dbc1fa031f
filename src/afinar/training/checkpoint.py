"""Checkpoints that survive a stopped VM: atomic, complete or absent, and enough to resume exactly.

A checkpoint folder `checkpoints/step-000050/` holds the adapter (safetensors), the optimizer and
scheduler states, the RNG states and the data position (epoch, batch). It is written under a
temporary name, a completion marker is added last, and only then is it renamed into place;
`latest_checkpoint` ignores any folder without the marker, so a half-written checkpoint is
skipped in favour of the previous complete one.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from afinar.io import atomic_dir

COMPLETE = "COMPLETE"
STATE_FILE = "trainer_state.pt"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def save_checkpoint(run_dir: Path, step: int, model, optimizer, scheduler, state: dict[str, Any], keep: int = 2) -> Path:
    """Write checkpoint `step` atomically and prune all but the newest `keep` ones."""
    root = run_dir / "checkpoints"
    target = root / f"step-{step:06d}"
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        torch.save({
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python_rng": random.getstate(),
        }, tmp / STATE_FILE)
        (tmp / "state.json").write_text(json.dumps(state, indent=2))
        (tmp / COMPLETE).write_text("ok\n")
    for old in complete_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def complete_checkpoints(run_dir: Path) -> list[Path]:
    root = run_dir / "checkpoints"
    if not root.exists():
        return []
    found = [p for p in root.iterdir() if _STEP_DIR.match(p.name) and (p / COMPLETE).exists()]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = complete_checkpoints(run_dir)
    return found[-1] if found else None


def load_checkpoint(path: Path, model, optimizer, scheduler) -> dict[str, Any]:
    """Restore adapter weights, optimizer, scheduler and RNG states; return the saved state."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(path / "adapter_model.safetensors"))
    saved = torch.load(path / STATE_FILE, weights_only=True)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["torch_rng"])
    if saved["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["cuda_rng"])
    random.setstate(_as_rng_state(saved["python_rng"]))
    return json.loads((path / "state.json").read_text())


def _as_rng_state(state):
    version, internal, gauss = state
    return version, tuple(internal), gauss
