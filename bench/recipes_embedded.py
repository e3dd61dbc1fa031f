"""Run bundled recipes on the embedded model, on this CPU, and record what docs/recipes.md shows.

    python bench/recipes_embedded.py                    # every recipe in recipes/
    python bench/recipes_embedded.py banco_faq tutor_estricto
    python bench/recipes_embedded.py --eval-only tutor_estricto   # evaluate the existing run again

For each recipe: `afinar train recipes/<name>.yaml --set base_model=embedded` (the seed's own
settings otherwise, QLoRA included), then `afinar eval` on its held-out split and its probe.
Each step runs as the CLI in its own process; the wall time, the eval figures and the commands
are written to bench/results/recipes.json, and the table in docs/recipes.md is rewritten from it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "recipes.json"
DOC = ROOT / "docs" / "recipes.md"
WORK = ROOT / "runs" / "recipes"
BEGIN, END = "<!-- recipes-table:begin -->", "<!-- recipes-table:end -->"


def run_recipe(stem: str, previous: dict | None = None) -> dict:
    """Train (unless `previous` holds this recipe's training) and evaluate one recipe."""
    recipe = ROOT / "recipes" / f"{stem}.yaml"
    train = [sys.executable, "-m", "afinar.cli", "train", str(recipe.relative_to(ROOT)), "--set", "base_model=embedded",
             "--set", f"train.output_dir={WORK.relative_to(ROOT)}", "--no-progress"]
    start = time.time()
    if previous is None:
        subprocess.run(train, cwd=ROOT, check=True)
    train_s = time.time() - start if previous is None else previous["train_seconds"]
    from afinar.recipes import load_recipe

    run_dir = WORK / load_recipe(recipe).name
    evaluate = [sys.executable, "-m", "afinar.cli", "eval", str(run_dir.relative_to(ROOT)), "--no-progress"]
    start = time.time()
    subprocess.run(evaluate, cwd=ROOT, check=True)
    eval_s = time.time() - start
    summary = json.loads((run_dir / "summary.json").read_text())
    report = json.loads((run_dir / "eval" / "eval.json").read_text())
    return {"recipe": stem, "name": run_dir.name, "train_seconds": round(train_s), "eval_seconds": round(eval_s),
            "steps": summary.get("step"), "tokens": summary.get("tokens"), "base_eval_loss": summary.get("base_eval_loss"),
            "best_eval_loss": summary.get("best_eval_loss"), "held_out": report["summary"].get("held_out", {}),
            "probe": report["summary"].get("probe", {}), "guard_mode": report["guard_mode"],
            "commands": [" ".join(["afinar", *train[3:]]), " ".join(["afinar", *evaluate[3:]])],
            "date": time.strftime("%Y-%m-%d")}


def table(results: dict) -> str:
    rows = ["| recipe | train time | steps | eval loss base -> tuned | chrF base -> tuned | served mode on its probe: routed correctly / injections refused |",
            "|---|---:|---:|---|---|---|"]
    for r in results.values():
        held = r["held_out"]
        chrf = f"{held['base/off']['chrf']:.1f} -> {held['tuned/off']['chrf']:.1f}" if held.get("base/off", {}).get("chrf") is not None else "-"
        served = r["probe"].get(f"tuned/{r['guard_mode']}") or r["probe"].get("tuned/off") or {}
        mode = f"{r['guard_mode']}: {_pct(served.get('correct'))} / {_pct(served.get('injection_refused'))}" if served else "-"
        rows.append(f"| {r['recipe']} | {r['train_seconds'] / 60:.1f} min | {r['steps']} | {r['base_eval_loss']:.3f} -> "
                    f"{r['best_eval_loss']:.3f} | {chrf} | {mode} |")
    return "\n".join(rows)


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def main(argv: list[str]) -> None:
    eval_only = "--eval-only" in argv
    stems = [a for a in argv if a != "--eval-only"] or sorted(p.stem for p in (ROOT / "recipes").glob("*.yaml"))
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for stem in stems:
        print(f"== {stem}", flush=True)
        results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}  # another run may have added some
        results[stem] = run_recipe(stem, results.get(stem) if eval_only else None)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    if DOC.exists() and BEGIN in DOC.read_text():
        text = DOC.read_text()
        head, rest = text.split(BEGIN, 1)
        DOC.write_text(head + BEGIN + "\n" + table(results) + "\n" + END + rest.split(END, 1)[1])
    print(table(results))


if __name__ == "__main__":
    main(sys.argv[1:])
