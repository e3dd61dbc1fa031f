"""`afinar demo`: the whole pipeline on the bundled Spanish tutor dataset and the embedded model.

Steps (each prints what it does and what it found):
  1. check the bundled dataset (afinar data check)
  2. prepare train/eval splits with paraphrases and refusals (afinar data prepare)
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from afinar.data import check_data, prepare_data
from afinar.models import load_tokenizer
from afinar.recipe import load_recipe


def demo_recipe_path() -> Path:
    return Path(str(resources.files("afinar") / "resources" / "demo" / "tutor.yaml"))


def _step(number: int, total: int, text: str) -> None:
    print(f"\n[{number}/{total}] {text}", flush=True)


def run_demo(workdir: Path, overrides: list[str] | None = None) -> dict:
    """Run the demo into `workdir`; returns what each step produced."""
    recipe_path = demo_recipe_path()
    recipe = load_recipe(recipe_path, [f"train.output_dir={workdir}", *(overrides or [])])
    total = 2
    print(f"afinar demo: recipe {recipe_path}\nbase model: {recipe.base_model}")

    _step(1, total, f"Checking {Path(recipe.data.files[0]).name}")
    tokenizer = load_tokenizer(recipe.base_model, recipe.trust_remote_code, recipe.chat_template)
    report = check_data(recipe.data.files, tokenizer=tokenizer, tokenizer_name=recipe.base_model,
                        system_prompt=recipe.system_prompt, max_seq_len=recipe.train.max_seq_len)
    for line in report.summary_lines():
        print("  " + line)

    _step(2, total, "Preparing train/eval data (split by answer, paraphrases, out-of-domain refusals)")
    prepared = prepare_data(recipe, Path(workdir) / recipe.name / "data", tokenizer, recipe.base_model)
    print("  " + prepared.summary())
    print(f"  wrote {prepared.out_dir}")
    return {"recipe": recipe, "report": report, "prepared": prepared}
