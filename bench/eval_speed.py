"""`afinar eval`'s answering on a trained run: peft's and transformers' defaults against afinar's,
alternated in one process, with the answers compared.

    python bench/eval_speed.py                                  # a quick run of the demo recipe
    python bench/eval_speed.py runs/tutor-algoritmos            # the demo run (`make demo`)
    python bench/eval_speed.py RUN --contestants tuned base --rounds 2

Each contestant answers the run's held-out split and its probe exactly as `afinar eval` does
(`LocalModel.answers`: greedy, batches of similar length, the records each question is grounded
on), in two set-ups:
  - "defaults": peft's modules answering, the adapter in fp32 on a bf16 base (peft's
    `autocast_adapter_dtype`), and transformers' DynamicCache (each step appends with torch.cat);
  - "afinar": merged, packed copies of the layers (`assistant/weights.py`; they ignore the
    adapter's dtype) and the KV cache written in place (`generation.growing_cache`).
Prints the seconds of each round and how many answers are identical; writes
bench/results/eval_speed.json. On an fp32 base the adapter dtype is the same in both.
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    import torch
    from transformers import DynamicCache

    import afinar.assistant.generation as generation
    from afinar.assistant.weights import AnswerWeights
    from afinar.evaluation.contestants import LocalModel
    from afinar.evaluation.probe import held_out_items, load_probe
    from machine import machine_info

    evaluate = importlib.import_module("afinar.evaluation.evaluate")  # the module, not the function
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, nargs="?", help="a trained run (default: a quick run of the demo recipe)")
    parser.add_argument("--contestants", nargs="+", default=["tuned", "base"], choices=["tuned", "base", "ungrounded"])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "eval_speed.json")
    args = parser.parse_args()
    if args.run is None:
        from machine import quick_demo_run

        args.run = quick_demo_run()

    run = generation.load_run(args.run)
    recipe = run.recipe
    held = held_out_items(args.run / "data" / "eval.jsonl")
    probe_path = evaluate._probe_path(None, recipe, print)
    probe = load_probe(probe_path) if probe_path else []
    if recipe.grounded:
        guard, _ = evaluate._guard(args.run, recipe)
        evaluate._ground(held + probe, guard, recipe)
    models = {"tuned": LocalModel("tuned", "", run.model, run.tokenizer, recipe, "default", recipe.grounded),
              "base": LocalModel("base", "", run.model, run.tokenizer, recipe, None, recipe.grounded),
              "ungrounded": LocalModel("ungrounded", "", run.model, run.tokenizer, recipe, "default")}
    lora = {n: p for n, p in run.model.named_parameters() if "lora_" in n}
    loaded = {n: p.data.clone() for n, p in lora.items()}  # as afinar loads them
    copies = AnswerWeights.use
    setups = {"defaults": (lambda room: DynamicCache(), torch.float32, lambda self, adapter: False),
              "afinar": (generation.growing_cache, None, copies)}
    ours = generation.growing_cache
    seconds: dict = {}
    answers: dict = {}
    try:
        for rnd in range(args.rounds):
            for setup, (cache, dtype, use) in setups.items():
                generation.growing_cache, AnswerWeights.use = cache, use
                for n, p in lora.items():
                    p.data = loaded[n].to(dtype) if dtype is not None and loaded[n].is_floating_point() else loaded[n]
                for name in args.contestants:
                    start = time.perf_counter()
                    answers[setup, name] = [t for items in (held, probe) for t in
                                            models[name].answers(items, recipe.eval.max_new_tokens, recipe.eval.batch_size)]
                    seconds.setdefault(f"{setup}/{name}", []).append(round(time.perf_counter() - start, 1))
                    print(f"round {rnd + 1}: {setup:8s} {name:10s} {seconds[f'{setup}/{name}'][-1]:7.1f} s", flush=True)
    finally:
        generation.growing_cache, AnswerWeights.use = ours, copies
    rows = {}
    for name in args.contestants:
        same = sum(a == b for a, b in zip(answers["defaults", name], answers["afinar", name]))
        old, new = min(seconds[f"defaults/{name}"]), min(seconds[f"afinar/{name}"])
        rows[name] = {"defaults_s": old, "afinar_s": new, "speedup": round(old / new, 2),
                      "identical": same, "answers": len(answers["afinar", name])}
        print(f"{name}: {old:.1f} -> {new:.1f} s ({old / new:.2f}x), identical answers {same}/{len(answers['afinar', name])}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": "python bench/eval_speed.py " + str(args.run), "machine": machine_info(),
                                    "run": str(args.run), "adapter_dtype": str(next(iter(loaded.values())).dtype),
                                    "seconds": seconds, "contestants": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
