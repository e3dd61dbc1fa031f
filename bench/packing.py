"""Packing vs length-grouped padding for afinar's own loop, same data, one run.

    python bench/packing.py [--examples 40] [--epochs 1]

Decides `train.packing: auto` on this device (issue: "packing or length-grouped dynamic padding,
whichever the benchmark shows faster"). Each layout trains in its own process on the same FAQ
rows and held-out split; the table gives time per epoch, tokens/s and the eval loss afinar logs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def worker(recipe_dir: str, packing: str) -> None:
    from afinar.recipes import load_recipe
    from afinar.training import train

    recipe = load_recipe(Path(recipe_dir) / "r.yaml", [f"train.packing={packing}", f"name=pack-{packing}"])
    r = train(recipe, progress=False, log=lambda *a, **k: None)
    print(json.dumps({"packing": packing, "seconds": r.seconds, "tokens": r.tokens, "steps": r.steps,
                      "tokens_per_s": r.tokens / r.seconds, "eval_loss": r.best_eval_loss}))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--examples", type=int, default=40)
    p.add_argument("--epochs", type=float, default=1)
    p.add_argument("--worker", nargs=2)
    args = p.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    from train_speed import faq_rows

    folder = Path(tempfile.mkdtemp(prefix="afinar-packing-"))
    rows = faq_rows(args.examples)
    (folder / "faq.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    (folder / "r.yaml").write_text(
        "base_model: embedded\ndata: {files: [faq.jsonl], eval_fraction: 0.2, paraphrases: 0, negatives: 0}\n"
        f"train: {{epochs: {args.epochs}, output_dir: {folder / 'runs'}}}\nguard: {{mode: off}}\n", encoding="utf-8")
    results = []
    for packing in ("off", "on"):
        out = subprocess.run([sys.executable, __file__, "--worker", str(folder), packing], capture_output=True, text=True, check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print("| layout | s / epoch | tokens/s | eval loss |\n|---|---:|---:|---:|")
    for r in results:
        name = "packing" if r["packing"] == "on" else "length-grouped padding"
        print(f"| {name} | {r['seconds'] / args.epochs:.1f} | {r['tokens_per_s']:.0f} | {r['eval_loss']:.4f} |")
    out = HERE / "results" / "packing.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"command": " ".join(["python", "bench/packing.py", *sys.argv[1:]]), "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
