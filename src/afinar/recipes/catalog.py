"""The bundled recipes (recipes/ in the source tree): list them and check their GPU settings.

`afinar recipes list` shows each recipe with its seed, base model, data and guard mode.
`afinar recipes check` validates every recipe as written for its GPU base model, without
downloading it: the recipe resolves, its data files pass `data check` (structure), and its LoRA
target modules exist in the base model's architecture (built on the meta device from its known
config, see known_models.py), with the parameter counts the GPU run will have.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from afinar.errors import AfinarError


@dataclass
class RecipeInfo:
    path: Path
    name: str
    seed: str  # the recipe file's first comment line
    base_model: str
    schema: str
    data: list[str]
    guard: str


def recipes_dir() -> Path:
    """$AFINAR_RECIPES, else the source tree's recipes/, else ./recipes."""
    for candidate in (os.environ.get("AFINAR_RECIPES"), Path(__file__).resolve().parents[3] / "recipes", Path("recipes")):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    raise AfinarError("no recipes folder found: set AFINAR_RECIPES or run from a checkout of afinar (recipes/)")


def list_recipes(folder: Path | None = None) -> list[RecipeInfo]:
    from afinar.recipes import load_recipe

    out = []
    for path in sorted((folder or recipes_dir()).glob("*.yaml")):
        recipe = load_recipe(path)
        first = next((ln.lstrip("# ").strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.startswith("#")), "")
        out.append(RecipeInfo(path, recipe.name, first, recipe.base_model, recipe.data.schema_,
                              [Path(f).name for f in recipe.data.files], recipe.guard_mode))
    return out


def check_gpu_settings(path: Path) -> list[str]:
    """Validate a recipe for its own base model; returns what was checked, raises AfinarError."""
    from afinar.data import check_data
    from afinar.recipes.known_models import meta_model
    from afinar.recipes import load_recipe
    from afinar.training.lora import check_targets, target_modules

    recipe = load_recipe(path)
    report = check_data(recipe.data.files, schema=recipe.data.schema_, columns=recipe.data.columns, min_examples=recipe.data.min_examples)
    if not report.ok:
        raise AfinarError(f"{path}: its data does not pass `afinar data check`: {report.errors[0]}")
    lines = [f"{recipe.name}: recipe resolves; data: {report.n_records} records, {len(report.examples)} usable"]
    model = meta_model(recipe.base_model)
    if model is None:
        return lines + [f"  {recipe.base_model}: not a known architecture here; target modules are checked when it loads"]
    notes: list[str] = []
    targets = check_targets(model, target_modules(recipe, model.config.model_type), notes.append)
    if notes:  # the recipe must name its own base model's layers, not rely on the CPU mapping
        raise AfinarError(f"{path}: {notes[0]} for its own base model {recipe.base_model}")
    total = sum(p.numel() for p in model.parameters())
    lora = _lora_parameters(model, targets, recipe.lora.r)
    lines.append(f"  {recipe.base_model} ({model.config.model_type}, {total / 1e9:.2f}B parameters): LoRA r={recipe.lora.r} on "
                 f"{', '.join(targets) if isinstance(targets, list) else targets} trains {lora / 1e6:.1f}M "
                 f"({100 * lora / total:.2f}%); quantization {recipe.quantization}")
    return lines


def _lora_parameters(model, targets, r: int) -> int:
    import torch

    count = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and (targets == "all-linear" or name.rsplit(".", 1)[-1] in targets):
            count += r * (module.in_features + module.out_features)
    return count
