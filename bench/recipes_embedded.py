"""Run bundled recipes on the embedded model, on this CPU, and record what docs/recipes.md shows.

    python bench/recipes_embedded.py                    # every recipe in recipes/
    python bench/recipes_embedded.py banco_faq tutor_estricto
    python bench/recipes_embedded.py --eval-only tutor_estricto   # evaluate the existing run again
    python bench/recipes_embedded.py historias_usuario --set grounding.mode=on --label "grounding on"

For each recipe: `afinar train recipes/<name>.yaml --set base_model=embedded` (the seed's own
settings otherwise, QLoRA included), then `afinar eval` on its held-out split and its probe.
Each step runs as the CLI in its own process; the wall time, the eval figures and the commands
are written to bench/results/recipes.json, and the table in docs/recipes.md is rewritten from it.
With `--set KEY=VALUE` (recipe overrides, as for `afinar train`) and `--label`, the results go
under "<recipe> [<label>]" and the run to runs/recipes/<label>/: the same recipe measured with
and without a setting (docs/grounding.md: grounding per schema), the doc's table untouched.
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


def run_recipe(stem: str, previous: dict | None = None, overrides: list[str] = (), label: str | None = None) -> dict:
    """Train (unless `previous` holds this recipe's training) and evaluate one recipe."""
    recipe = ROOT / "recipes" / f"{stem}.yaml"
    work = WORK / label.replace(" ", "-") if label else WORK
    train = [sys.executable, "-m", "afinar.cli", "train", str(recipe.relative_to(ROOT)), "--set", "base_model=embedded",
             "--set", f"train.output_dir={work.relative_to(ROOT)}", "--no-progress",
             *[a for o in overrides for a in ("--set", o)]]
    start = time.time()
    if previous is None:
        subprocess.run(train, cwd=ROOT, check=True)
    train_s = time.time() - start if previous is None else previous["train_seconds"]
    from afinar.recipes import load_recipe

    run_dir = work / load_recipe(recipe).name
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
            "overrides": list(overrides), "date": time.strftime("%Y-%m-%d")}


def table(results: dict) -> str:
    rows = ["| recipe | train time | steps | eval loss base -> tuned | chrF base -> tuned | served mode on its probe: routed correctly / injections refused | key facts (invented) |",
            "|---|---:|---:|---|---|---|---|"]
    for r in results.values():
        held = r["held_out"]
        chrf = f"{held['base/off']['chrf']:.1f} -> {held['tuned/off']['chrf']:.1f}" if held.get("base/off", {}).get("chrf") is not None else "-"
        served = r["probe"].get(f"tuned/{r['guard_mode']}") or r["probe"].get("tuned/off") or {}
        mode = f"{r['guard_mode']}: {_pct(served.get('correct'))} / {_pct(served.get('injection_refused'))}" if served else "-"
        facts = f"{_pct(served.get('keys'))} ({_pct(served.get('invented'))})" if served.get("keys") is not None else "-"
        rows.append(f"| {r['recipe']} | {r['train_seconds'] / 60:.1f} min | {r['steps']} | {r['base_eval_loss']:.3f} -> "
                    f"{r['best_eval_loss']:.3f} | {chrf} | {mode} | {facts} |")
    return "\n".join(rows)


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def main(argv: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="*", help="recipe stems in recipes/ (default: every one)")
    parser.add_argument("--eval-only", action="store_true", help="evaluate the existing runs again")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--label", default=None, help="store as '<recipe> [<label>]' (needed with --set)")
    args = parser.parse_args(argv)
    if args.overrides and not args.label:
        parser.error("--set needs a --label: the recipe's own results stay as they are")
    stems = args.recipes or sorted(p.stem for p in (ROOT / "recipes").glob("*.yaml"))
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for stem in stems:
        print(f"== {stem}" + (f" [{args.label}]" if args.label else ""), flush=True)
        key = f"{stem} [{args.label}]" if args.label else stem
        results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}  # another run may have added some
        results[key] = run_recipe(stem, results.get(key) if args.eval_only else None, args.overrides, args.label)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    plain = {k: v for k, v in results.items() if "[" not in k}
    if DOC.exists() and BEGIN in DOC.read_text():
        text = DOC.read_text()
        head, rest = text.split(BEGIN, 1)
        DOC.write_text(head + BEGIN + "\n" + table(plain) + "\n" + END + rest.split(END, 1)[1])
    print(table(plain))


if __name__ == "__main__":
    main(sys.argv[1:])
