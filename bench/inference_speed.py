"""Inference speed: one reply at a time, afinar's engine against plain transformers and llama.cpp.

    .venv/bin/python bench/inference_speed.py                  # ~4 min: a quick run, its GGUFs, every contender
    .venv/bin/python bench/inference_speed.py --run runs/demo/tutor-algoritmos
    .venv/bin/python bench/inference_speed.py --prompt-tokens 600   # a grounded-size prompt: time to first token

The same trained run (embedded SmolLM2-135M + LoRA adapter) answers the same 100-token prompt
(its system prompt and chat template included) with 128 new tokens, greedy, end of turn held back
so that every contender generates exactly 128 tokens:

  transformers fp32    the seeds' way: fp32 base + peft adapter, `generate()`;
  llama.cpp f16/q8_0   llama-cpp-python over the run exported by `afinar export --to gguf`
                       (adapter merged), its own `generate()`;
  afinar (torch)       `Engine(run)`: bf16 base + adapter, the dynamic batcher, streaming, and the
                       recipe's guard deciding first (the question is in the domain);
  afinar (llama.cpp)   `Engine(run, backend="llamacpp")`: the same GGUF (f16) behind afinar's guard,
                       template and streaming.

Each contender runs in its own process, 3 times after a warm-up; the best run is kept (other
processes only ever slow a run down). Reported: new tokens/s over the whole reply (prefill
included; for afinar, the guard's decision too), time to first token, and the guard's own time
per question (`Engine.decide` over the demo's probe questions). Targets (issue 9): afinar >= 3x transformers fp32 and within 1.5x
of llama.cpp (f16, the same precision); the guard under 50 ms per question.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from machine import machine_info, quick_demo_run, run_worker

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PROBE = ROOT / "src" / "afinar" / "resources" / "demo" / "tutor_sondeo.jsonl"
OUT = HERE / "results" / "inference_speed.json"
PROMPT_TOKENS, NEW_TOKENS, REPEATS = 100, 128, 3
TARGET_VS_TRANSFORMERS, TARGET_VS_LLAMACPP, TARGET_GUARD_MS = 3.0, 1.5, 50.0
TARGET_DEFAULT_SHARE, TARGET_TTFT_S, LONG_PROMPT = 0.8, 0.5, 500  # issue 20: default engine vs llama.cpp; grounded TTFT
CONTENDERS = (
    ("transformers-fp32", "transformers fp32 (the seeds' way)"),
    ("llamacpp-f16", "llama.cpp f16"),
    ("llamacpp-q8_0", "llama.cpp q8_0"),
    ("afinar-torch", "afinar engine (torch)"),
    ("afinar-llamacpp", "afinar engine (llama.cpp f16)"),
)
QUESTION = ("Explícame paso a paso cómo funciona la búsqueda binaria sobre una lista ordenada, por qué su coste es "
            "logarítmico, en qué se diferencia de la búsqueda lineal y cuándo conviene usar cada una; incluye un ejemplo "
            "en Python con una lista de enteros, comenta los casos límite como la lista vacía o el elemento ausente, y "
            "termina con un resumen breve para repasar antes del examen de estructuras de datos del viernes por la tarde")


def question_for(tokenizer, recipe, tokens: int = PROMPT_TOKENS) -> str:
    """The longest run of QUESTION's words (repeated as needed) whose rendered prompt is at most `tokens` tokens."""
    words, best = QUESTION.split(), ""
    for n in range(1, 40 * len(words)):
        text = " ".join(words[i % len(words)] for i in range(n))
        if len(tokenizer(render_question(tokenizer, recipe, text), add_special_tokens=False)["input_ids"]) > tokens:
            break
        best = text
    return best


# --------------------------------------------------------------------------------------------
# workers (each in its own process)


def _fit_with_records(engine, tokenizer, recipe, tokens: int) -> str:
    """A question whose prompt as the engine renders it, with the records it grounds on, is about
    `tokens` long (the records take 150-250 tokens and depend on the question: fitted twice)."""
    question = question_for(tokenizer, recipe, tokens)
    for _ in range(2):
        reply = list(engine.stream([{"role": "user", "content": question}], max_new_tokens=1))[-1]
        if reply.refused:
            return question
        own = len(tokenizer(render_question(tokenizer, recipe, question), add_special_tokens=False)["input_ids"])
        question = question_for(tokenizer, recipe, tokens - (reply.prompt_tokens - own))
    return question


def render_question(tokenizer, recipe, question: str) -> str:
    """The prompt one question renders to, system prompt and chat template included (no records)."""
    from afinar.chat_template import render_prompt, with_system

    return render_prompt(tokenizer, with_system([{"role": "user", "content": question}], recipe.system_prompt))


def _timed(call) -> tuple[float, float, int]:
    """(seconds to the first token, seconds in all, new tokens) of one generation; `call(first)`
    runs it, calling first() when the first token arrives, and returns the token count."""
    began, first = time.perf_counter(), []
    n = call(lambda: first or first.append(time.perf_counter() - began))
    return first[0] if first else float("nan"), time.perf_counter() - began, n


def worker(kind: str, run_dir: Path, prompt_tokens: int = PROMPT_TOKENS) -> dict:
    import torch

    from afinar.models import read_run

    recipe, tokenizer, adapter = read_run(run_dir)
    question = question_for(tokenizer, recipe, prompt_tokens)
    messages = [{"role": "user", "content": question}]
    ids = tokenizer(render_question(tokenizer, recipe, question), add_special_tokens=False)["input_ids"]
    out = {"contender": kind, "prompt_tokens": len(ids)}

    if kind == "transformers-fp32":
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, TextStreamer

        from afinar.models import resolve_model_path

        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(resolve_model_path(recipe.base_model),
                                                                               dtype=torch.float32), str(adapter)).eval()
        inputs = torch.tensor([ids])

        class First(TextStreamer):
            def __init__(self, first):
                super().__init__(tokenizer, skip_prompt=True)
                self.first, self.seen = first, 0

            def put(self, value):
                self.seen += 1
                if self.seen == 2:  # the first call hands over the prompt
                    self.first()

        def call(first):
            with torch.no_grad():
                new = model.generate(inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id, streamer=First(first))
            return new.shape[1] - len(ids)
    elif kind.startswith("llamacpp-"):
        from llama_cpp import Llama

        from afinar.assistant.llamacpp import ensure_gguf

        llm = Llama(model_path=str(ensure_gguf(run_dir, recipe, kind.split("-", 1)[1])), n_ctx=0,
                    n_threads=os.cpu_count(), n_batch=512, verbose=False)

        def call(first):
            n = 0
            llm.reset()  # forget the previous run's prompt: every run pays its own prefill
            for _ in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
                n += 1
                if n == 1:
                    first()
                if n == NEW_TOKENS:
                    return n
            return n
    else:
        from afinar.assistant.engine import Engine

        # the recipe's guard mode (refuse): the guard decides before every reply, as users get it
        engine = Engine([run_dir], backend=kind.split("-", 1)[1], log=lambda *a: print(*a, file=sys.stderr))
        if prompt_tokens >= LONG_PROMPT:  # a grounded prompt of about this length, its records included
            messages = [{"role": "user", "content": _fit_with_records(engine, tokenizer, recipe, prompt_tokens)}]

        def call(first):
            reply = None
            for generator in engine._llama.values():  # as above: no prompt reused from the previous run
                generator.llm.reset()
            for item in engine.stream(messages, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS):
                if isinstance(item, str):
                    first()
                else:
                    reply = item
            if reply.refused:
                raise SystemExit("the guard refused the benchmark's question; nothing was generated")
            out["prompt_tokens"] = reply.prompt_tokens  # the records the engine grounds on included
            return reply.tokens

    _timed(call)  # warm-up: thread pools, caches, kernel selection
    runs = [_timed(call) for _ in range(REPEATS)]
    if kind == "afinar-torch":
        out["guard_ms"] = guard_times(engine)
    best = min(runs, key=lambda r: r[1] / max(1, r[2]))
    out.update(new_tokens=best[2], ttft_s=best[0], total_s=best[1], tokens_per_s=best[2] / best[1],
               decode_tokens_per_s=(best[2] - 1) / (best[1] - best[0]), runs=[list(r) for r in runs])
    return out


def guard_times(engine) -> dict:
    """The guard's decision time per question (`Engine.decide`, refuse mode) over the demo probe."""
    questions = [json.loads(line)["question"] for line in PROBE.read_text(encoding="utf-8").splitlines() if line.strip()]
    engine.decide([{"role": "user", "content": questions[0]}])  # warm-up
    times = []
    for q in questions:
        began = time.perf_counter()
        engine.decide([{"role": "user", "content": q}])
        times.append(1000 * (time.perf_counter() - began))
    times.sort()
    return {"questions": len(times), "p50_ms": statistics.median(times), "p95_ms": times[int(0.95 * (len(times) - 1))],
            "max_ms": times[-1]}


# --------------------------------------------------------------------------------------------
# driver


def run_contender(kind: str, run_dir: Path, log_path: Path, prompt_tokens: int = PROMPT_TOKENS) -> dict | None:
    proc, _, busy = run_worker([sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--run", str(run_dir),
                                "--prompt-tokens", str(prompt_tokens)], log_path, kind, ROOT)
    if proc.returncode != 0:
        tail = "".join(log_path.read_text(encoding="utf-8").splitlines(keepends=True)[-15:])
        print(f"  {kind}: failed (exit {proc.returncode}); last lines of {log_path}:\n{tail}", flush=True)
        return None
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["other_load"] = busy
    print(f"  {kind}: {out['tokens_per_s']:.1f} tokens/s, first token {1000 * out['ttft_s']:.0f} ms", flush=True)
    return out


def llama_cpp_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def markdown(rows: dict, guard: dict | None) -> str:
    lines = ["| contender | prompt tokens | new tokens/s | time to first token | decode tokens/s | new tokens |",
             "|---|---:|---:|---:|---:|---:|"]
    for kind, label in CONTENDERS:
        if kind in rows:
            r = rows[kind]
            lines.append(f"| {label} | {r['prompt_tokens']} | {r['tokens_per_s']:.1f} | {1000 * r['ttft_s']:.0f} ms | "
                         f"{r['decode_tokens_per_s']:.1f} | {r['new_tokens']} |")
    lines.append("")
    lines += [f"- {text} ({measured}): {'met' if ok else 'NOT met'}." for text, measured, ok in verdicts(rows, guard)]
    return "\n".join(lines)


def verdicts(rows: dict, guard: dict | None) -> list[tuple[str, str, bool]]:
    """(target, measured, met) for each of issue 9's inference targets."""
    out = []
    ours = max((rows[k] for k in ("afinar-torch", "afinar-llamacpp") if k in rows), key=lambda r: r["tokens_per_s"], default=None)
    if ours and "transformers-fp32" in rows:
        ratio = ours["tokens_per_s"] / rows["transformers-fp32"]["tokens_per_s"]
        out.append((f"afinar's engine >= {TARGET_VS_TRANSFORMERS:g}x transformers fp32", f"{ratio:.1f}x ({ours['contender']})",
                    ratio >= TARGET_VS_TRANSFORMERS))
    if ours and "llamacpp-f16" in rows:
        ratio = rows["llamacpp-f16"]["tokens_per_s"] / ours["tokens_per_s"]
        out.append((f"afinar's engine within {TARGET_VS_LLAMACPP:g}x of llama.cpp f16", f"llama.cpp is {ratio:.2f}x afinar's speed",
                    ratio <= TARGET_VS_LLAMACPP))
    if "llamacpp-f16" in rows:
        lcpp = rows["llamacpp-f16"]["tokens_per_s"]
        for kind, what in (("afinar-llamacpp", "chat's and ask's default engine (auto: llama.cpp, installed by `make demo`)"),
                           ("afinar-torch", "the torch engine (auto's fallback without llama-cpp-python)")):
            if kind in rows:
                share = rows[kind]["tokens_per_s"] / lcpp
                out.append((f"{what} >= {TARGET_DEFAULT_SHARE:g}x llama.cpp f16's tokens/s", f"{share:.2f}x",
                            share >= TARGET_DEFAULT_SHARE))
    for kind in ("afinar-llamacpp", "afinar-torch"):
        r = rows.get(kind)
        if r and r["prompt_tokens"] >= LONG_PROMPT:
            out.append((f"{kind}: time to first token <= {TARGET_TTFT_S:g} s for a {r['prompt_tokens']}-token prompt",
                        f"{r['ttft_s']:.2f} s", r["ttft_s"] <= TARGET_TTFT_S))
    if guard:
        out.append((f"the guard under {TARGET_GUARD_MS:.0f} ms per question",
                    f"p50 {guard['p50_ms']:.0f} ms, p95 {guard['p95_ms']:.0f} ms over {guard['questions']} questions",
                    guard["p95_ms"] < TARGET_GUARD_MS))
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, help="a trained run (default: the demo recipe trained for two steps)")
    p.add_argument("--prompt-tokens", type=int, default=PROMPT_TOKENS,
                   help="prompt length (system prompt and template included; the engine adds its records)")
    p.add_argument("--out", type=Path, default=None, help="default: bench/results/inference_speed.json "
                   "(inference_speed_<N>.json for another --prompt-tokens)")
    p.add_argument("--worker", choices=[k for k, _ in CONTENDERS], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        real = sys.stdout
        sys.stdout = sys.stderr  # stdout carries only the JSON
        real.write(json.dumps(worker(args.worker, args.run, args.prompt_tokens)) + "\n")
        return
    out_path = args.out or (OUT if args.prompt_tokens == PROMPT_TOKENS else OUT.with_name(f"inference_speed_{args.prompt_tokens}.json"))
    began = time.perf_counter()
    run_dir = args.run or quick_demo_run()
    kinds = [k for k, _ in CONTENDERS if llama_cpp_available() or "llamacpp" not in k]
    if len(kinds) < len(CONTENDERS):
        print("llama-cpp-python is not installed: the llama.cpp contenders are skipped (pip install llama-cpp-python)")
    if any("llamacpp" in k for k in kinds):  # exported before timing anything, with the export's own checks
        from afinar.models import read_run
        from afinar.assistant.llamacpp import ensure_gguf

        recipe = read_run(run_dir)[0]
        for qtype in ("f16", "q8_0"):
            ensure_gguf(run_dir, recipe, qtype, log=lambda *a: None)
    log_path = Path(tempfile.mkdtemp(prefix="afinar-inference-")) / "workers.log"
    print(f"inference speed: {args.prompt_tokens}-token prompt, {NEW_TOKENS} new tokens, run {run_dir} (log {log_path})", flush=True)
    rows = {k: r for k in kinds if (r := run_contender(k, Path(run_dir), log_path, args.prompt_tokens))}
    guard = rows.get("afinar-torch", {}).get("guard_ms")
    report = {"command": ("python bench/inference_speed.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip(),
              "machine": machine_info(), "run": str(run_dir), "prompt_tokens": args.prompt_tokens, "new_tokens": NEW_TOKENS,
              "results": rows, "guard": guard, "markdown": markdown(rows, guard),
              "targets": {"vs_transformers_fp32": TARGET_VS_TRANSFORMERS, "vs_llamacpp_f16": TARGET_VS_LLAMACPP,
                          "guard_ms": TARGET_GUARD_MS},
              "bench_seconds": round(time.perf_counter() - began, 1)}
    out_path.parent.mkdir(exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(report["markdown"])


if __name__ == "__main__":
    main()
