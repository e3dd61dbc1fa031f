"""How afinar's training time grows with the number and the length of examples.

    .venv/bin/python bench/train_scaling.py           # ~9 min on 2 cores

afinar's defaults on the embedded model, one epoch, nothing held out (no evaluations), each run
in its own process:
  - FAQ-style examples (~90 tokens), 100, 1,000 and 10,000 of them, eager (`train.compile: off`),
    so that the rows differ only in size; the 10,000-example epoch is timed over its first
    `--fraction` of steps (the whole data set is still checked, split and encoded) and projected;
  - the same 1,000 examples with the decoder layers compiled (`train.compile: on`), after a
    warm-up run that fills inductor's cache as any earlier run on the machine would;
  - long examples: chat transcripts of three demo questions and answers each (~750 tokens, loss
    on every answer), eager and compiled.
Epoch time grows linearly when tokens/s stays flat across sizes.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import Clock, machine_info, peak_rss_mb
from train_speed import DEMO_FILE, faq_rows

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "train_scaling.json"
SIZES = (100, 1000, 10000)
TURNS_PER_TRANSCRIPT = 3


def faq_records(n: int) -> list[dict]:
    """`n` distinct FAQ pairs: the generator's 148, each asked about a numbered branch office."""
    base = faq_rows(148)
    return [{"pregunta": f"{r['pregunta'][:-1]} en la sede {i // len(base) + 1}?", "respuesta": r["respuesta"]}
            for i, r in ((i, base[i % len(base)]) for i in range(n))]


def transcripts(n: int) -> list[dict]:
    """`n` multi-turn chats, each three consecutive demo questions with their answers."""
    demo = [json.loads(line) for line in DEMO_FILE.read_text(encoding="utf-8").splitlines() if line.strip()]
    out = []
    for i in range(n):
        messages = []
        for k in range(TURNS_PER_TRANSCRIPT):
            r = demo[(i * TURNS_PER_TRANSCRIPT + k) % len(demo)]
            messages += [{"role": "user", "content": f"{r['pregunta']} (sesión {i + 1})" if k == 0 else r["pregunta"]},
                         {"role": "assistant", "content": r["respuesta"]}]
        out.append({"messages": messages})
    return out


def worker(spec: dict) -> dict:
    import afinar.training.loop as loop
    from afinar.recipes import validate_recipe
    from afinar.training.runtime import resolve_setup

    recipe = validate_recipe(spec["recipe"], "bench", Path(spec["workdir"]))
    epochs, steps = Clock(), Clock()
    loop._Loop._epochs = epochs.wrap(loop._Loop._epochs)
    loop._Loop._step = steps.wrap(loop._Loop._step)
    began = time.perf_counter()
    result = loop.train(recipe, progress=False, log=lambda *a, **k: print(*a, file=sys.stderr, **k))
    steps_per_epoch = math.ceil(spec["train_examples"] / recipe.train.batch_size)
    share = result.steps / steps_per_epoch
    trained = min(result.steps * recipe.train.batch_size, spec["train_examples"])
    return {"steps": result.steps, "steps_per_epoch": steps_per_epoch, "share_of_epoch": share,
            "mean_tokens": result.tokens / max(1, trained),
            "tokens": result.tokens, "loop_s": epochs.wall, "steps_s": steps.wall,
            "epoch_s": epochs.wall / share, "tokens_per_s": result.tokens / epochs.wall,
            "whole_call_s": time.perf_counter() - began, "peak_rss_mb": peak_rss_mb(),
            "setup": resolve_setup(recipe).describe() + (", compiled layers" if recipe.train.compile == "on" else "")}


def run(name: str, records: list[dict], compile_: str, workdir: Path, fraction: float = 1.0, max_steps: int = 0) -> dict:
    data = workdir / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    train = {"epochs": 1, "output_dir": str(workdir / "runs"), "compile": compile_, "save_every": 10**6}
    if fraction < 1:
        train["max_steps"] = max(1, int(fraction * math.ceil(len(records) / 8)))
    if max_steps:
        train["max_steps"] = max_steps
    recipe = {"name": name, "base_model": "embedded", "train": train,
              "data": {"files": [str(data)], "eval_fraction": 0.0, "paraphrases": 0, "negatives": 0, "min_examples": 1}}
    spec = {"recipe": recipe, "workdir": str(workdir), "train_examples": len(records)}
    print(f"  {name}: {len(records)} examples, compile {compile_}" + (f", first {fraction:.0%} of the epoch" if fraction < 1 else ""), flush=True)
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out.update(name=name, examples=len(records), compile=compile_, measured_fraction=out["share_of_epoch"])
    print(f"    {out['epoch_s']:.1f} s / epoch{' (projected)' if out['share_of_epoch'] < 1 else ''}, "
          f"{out['tokens_per_s']:.0f} tokens/s", flush=True)
    return out


def markdown(rows: list[dict]) -> str:
    lines = ["| examples | kind | mean tokens | layers | s / epoch | tokens/s | s per 1k examples |", "|---:|---|---:|---|---:|---:|---:|"]
    for r in rows:
        epoch = f"{r['epoch_s']:.1f}" + (f" (projected from {r['measured_fraction']:.0%})" if r["measured_fraction"] < 1 else "")
        lines.append(f"| {r['examples']:,} | {r['kind']} | {r['mean_tokens']:.0f} | {'compiled' if r['compile'] == 'on' else 'eager'} | "
                     f"{epoch} | {r['tokens_per_s']:.0f} | {1000 * r['epoch_s'] / r['examples']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fraction", type=float, default=0.05, help="share of the 10,000-example epoch that is timed (default 0.05)")
    p.add_argument("--long", type=int, default=48, help="long transcripts (default 48)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        real = sys.stdout
        sys.stdout = sys.stderr
        real.write(json.dumps(worker(json.loads(args.worker))) + "\n")
        return
    began = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="afinar-scaling-"))
    print(f"training time vs data size (work folder {workdir})", flush=True)
    rows = []
    for n in SIZES:
        rows.append({**run(f"faq-{n}", faq_records(n), "off", workdir, args.fraction if n > 1000 else 1.0), "kind": "FAQ"})
    warm = time.perf_counter()
    run("warmup", faq_records(64), "on", workdir, max_steps=2)
    warmup_s = time.perf_counter() - warm
    rows.append({**run("faq-1000-compiled", faq_records(1000), "on", workdir), "kind": "FAQ"})
    for compile_ in ("off", "on"):
        rows.append({**run(f"long-{compile_}", transcripts(args.long), compile_, workdir), "kind": f"chat transcripts ({TURNS_PER_TRANSCRIPT} turns)"})
    table = markdown(rows)
    report = {"command": ("python bench/train_scaling.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip(),
              "machine": machine_info(), "results": rows, "compile_warmup_s": warmup_s, "markdown": table,
              "bench_seconds": round(time.perf_counter() - began, 1)}
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(table)


if __name__ == "__main__":
    main()
