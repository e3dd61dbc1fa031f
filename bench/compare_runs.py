"""Paired bootstrap of chrF between two runs evaluated on the same questions (their eval.json):

    python bench/compare_runs.py runs/recipes/grounding-off/instrucciones runs/recipes/grounding-on/instrucciones

For each question set (held-out split, probe) with references: each run's corpus chrF of its
tuned model's own answers (`tuned/off`), the 95% interval, and the p-value of the difference
(sacrebleu's paired bootstrap, via `afinar.evaluation.metrics.paired_chrf`). `afinar eval
--against` compares two adapters inside one eval; this compares two evals already written, e.g.
the same recipe trained with and without a setting.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def compare(first: Path, second: Path, contestant: str = "tuned/off") -> dict:
    from afinar.evaluation.metrics import paired_chrf

    a, b = (json.loads((Path(p) / "eval" / "eval.json").read_text())["items"] for p in (first, second))
    if [it["question"] for it in a] != [it["question"] for it in b]:
        raise SystemExit(f"{first} and {second} were not evaluated on the same questions")
    out = {}
    for name, held in (("held_out", True), ("probe", False)):
        idx = [i for i, it in enumerate(a) if (it["origin"] == "held-out") == held and it.get("reference")]
        if len(idx) >= 2:
            text = lambda items: [items[i]["replies"][contestant]["text"] for i in idx]  # noqa: E731
            out[name] = {"n": len(idx), **paired_chrf(text(a), text(b), [a[i]["reference"] for i in idx])}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", type=Path, help="run folder (the rival)")
    parser.add_argument("second", type=Path, help="run folder")
    parser.add_argument("--contestant", default="tuned/off", help="which answers to compare (eval.json's replies)")
    args = parser.parse_args()
    for name, r in compare(args.first, args.second, args.contestant).items():
        print(f"{name} ({r['n']}): {args.first} {r['rival']} ± {r['rival_ci']}  ->  {args.second} {r['tuned']} ± {r['tuned_ci']}"
              f"  (p = {r['p_value']})")


if __name__ == "__main__":
    main()
