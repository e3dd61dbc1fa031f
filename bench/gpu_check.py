"""GPU check: afinar's own training loop on random-weight Llama 1B and 8B shapes, against the chip.

    bash bench/gpu_check.sh               # on one CUDA GPU (H200: ~4-6 min); no network needed
    python bench/gpu_check.py --cpu-tiny  # the same path, tiny shapes, CPU, fp32, ~15 s (CI; or GPU_CHECK_TINY=1)

Nothing is downloaded; the script builds everything it trains on:
  1. a byte-level BPE tokenizer trained on the FAQ's own text (the approach of tests/conftest.py);
  2. random-weight Llama models in the shapes of Llama-3.2-1B and Llama-3.1-8B (afinar's
     recipes/known_models.py), built on the GPU in bf16 and saved with safetensors in a temp folder;
  3. a synthetic Spanish FAQ (bench/train_speed.py's facts, answers lengthened to 512-900 tokens);
  4. a recipe per run (LoRA; QLoRA too when `import bitsandbytes` works), guard and grounding off
     (they need the embedder), no eval split, no checkpoints; then `afinar.training.train(recipe)`.
Per run it prints tokens/s, the achieved model FLOP/s and its share of the measured matmul peak,
and the peak memory next to `afinar doctor`'s estimate (`estimate_memory`, called as doctor.py does).
Targets (issue 20): >= 40% of the bf16 peak for the 8B LoRA step; doctor's estimate within 15%.
Results: stdout, and JSON in $OUT/gpu_check.json if $OUT is set, else bench/results/ (--out overrides;
--cpu-tiny writes gpu_check_tiny.json). Exit status 1 when a run failed (the others still ran).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from collections import namedtuple
from dataclasses import asdict, dataclass
from pathlib import Path

for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
    os.environ.setdefault(_var, "1")  # the GPU machine has no network: fail at once, never wait on a hub

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from machine import machine_info  # noqa: E402  bench/machine.py: CPU, memory, library versions
from train_speed import faq_rows  # noqa: E402  the training-speed bench's Spanish FAQ facts

TARGET_SHARE_8B = 0.40  # of the measured bf16 matmul peak, 8B LoRA step
TARGET_ESTIMATE = 0.15  # doctor's peak-memory estimate within 15% of the measured peak
SHAPES = {"1b": "meta-llama/Llama-3.2-1B-Instruct", "8b": "meta-llama/Llama-3.1-8B-Instruct"}
TINY_SHAPE = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "vocab_size": 512, "max_position_embeddings": 2048}
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
SYSTEM = "Eres el asistente del Centro de Formación Bancaria Altamira. Responde con los datos del centro."


# One training run; method lora | qlora; micro_batch_tokens is set, not auto, so that doctor's
# estimate and the run size the micro-batch alike.
Plan = namedtuple("Plan", "model method steps batch_size micro_batch_tokens")


@dataclass
class Mode:
    tiny: bool
    device: str
    precision: str
    lengths: tuple[int, int]  # tokens per example (question + answer), drawn uniformly
    examples: int
    tokenizer_vocab: int
    warmup_steps: int  # steps left out of the steady tokens/s (CUDA kernel choice, allocator growth)
    plans: list[Plan]


def gpu_mode() -> Mode:
    # 8B: 4096-token micro-batches keep doctor's estimate (76 GiB) under 80% of the H200's memory,
    # so afinar leaves gradient checkpointing off (at 8192 it would turn it on: 134 GiB) and the
    # step is plain 4N work; 1B: 16k-token micro-batches (estimate 61 GiB). 1-3 micro-batches a step.
    return Mode(False, "cuda", "bf16", (512, 900), 148, 4000, 3,
                [Plan("1b", "lora", 30, 16, 16384), Plan("8b", "lora", 30, 8, 4096), Plan("8b", "qlora", 15, 8, 4096)])


def tiny_mode() -> Mode:
    return Mode(True, "cpu", "fp32", (60, 120), 16, 400, 1,
                [Plan("1b", "lora", 3, 4, 512), Plan("8b", "lora", 3, 4, 512), Plan("8b", "qlora", 2, 4, 512)])


# ----------------------------------------------------------------------------------------------
# 1-3: tokenizer, data and models, all built here


def build_tokenizer(corpus: list[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on `corpus`, ChatML template, no download (as tests/conftest.py)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    fast.chat_template = CHATML
    return fast


def long_faq(pairs, tokenizer, n: int, lengths: tuple[int, int], seed: int = 7) -> list[dict]:
    """`n` FAQ records: each answer is the pair's own, then other answers, up to a drawn length."""
    rng = random.Random(seed)
    rows = []
    for question, answer in pairs[:n]:
        target, parts = rng.randint(*lengths), [answer]
        while len(tokenizer(question + " " + " ".join(parts))["input_ids"]) < target - 40:  # ~40: system prompt, template
            other = rng.choice(pairs)[1]
            parts.append(rng.choice(["Además,", "También conviene saber que", "Por otra parte,"]) + " " + other[0].lower() + other[1:])
        rows.append({"pregunta": question, "respuesta": " ".join(parts)})
    return rows


def save_model(folder: Path, name: str, tokenizer, mode: Mode) -> dict:
    """A random-weight Llama in `name`'s shape, built on the run's device and dtype, saved in `folder`."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig
    from transformers.utils import logging as hf_logging

    from afinar.recipes.known_models import KNOWN

    hf_logging.disable_progress_bar()
    began = time.perf_counter()
    fields = {k: v for k, v in KNOWN[SHAPES[name]].items() if k != "model_type"} | (TINY_SHAPE if mode.tiny else {})
    fields["vocab_size"] = max(fields["vocab_size"], len(tokenizer))
    config = LlamaConfig(**fields, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    with torch.device(mode.device):  # initialised where it trains: seconds for 8B on a GPU, not minutes on CPU
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if mode.precision == "bf16" else torch.float32)
    model.save_pretrained(folder, max_shard_size="4GB")  # safetensors; shards keep the host copy small
    tokenizer.save_pretrained(folder)
    shape = {k: getattr(config, k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                             "num_key_value_heads", "intermediate_size", "vocab_size", "tie_word_embeddings")}
    shape.update(parameters=sum(p.numel() for p in model.parameters()), build_and_save_s=round(time.perf_counter() - began, 1))
    del model
    free_memory()
    return shape


def free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def make_recipe(plan: Plan, mode: Mode, model_dir: Path, data_file: Path, work: Path):
    from afinar.recipes import validate_recipe

    raw = {"name": f"gpu-check-{plan.model}-{plan.method}", "base_model": str(model_dir), "system_prompt": SYSTEM,
           "quantization": "nf4" if plan.method == "qlora" else "none",
           "data": {"files": [str(data_file)], "eval_fraction": 0, "paraphrases": 0, "negatives": 0, "min_examples": 4},
           "train": {"epochs": 1000, "max_steps": plan.steps, "batch_size": plan.batch_size, "max_seq_len": 1024,
                     "micro_batch_tokens": plan.micro_batch_tokens, "precision": mode.precision,
                     "save_every": plan.steps + 1, "output_dir": str(work / "runs")},  # no checkpoint inside the run
           "guard": {"mode": "off"}, "grounding": {"mode": "off"}}
    return validate_recipe(raw, "gpu_check", work)


# ----------------------------------------------------------------------------------------------
# 4: measure


def matmul_peak(mode: Mode) -> dict:
    """Best square-matmul FLOP/s in the run's dtype, timed with the device synchronised; next to it
    the figure afinar doctor divides by (`estimate.matmul_flops` at its defaults: 1024 x 1024)."""
    import torch

    from afinar.training.estimate import matmul_flops

    dtype = torch.bfloat16 if mode.precision == "bf16" else torch.float32
    sizes, seconds = ((512,), 0.2) if mode.tiny else ((4096, 8192), 1.0)
    sync = torch.cuda.synchronize if mode.device == "cuda" else (lambda: None)
    best = {}
    for n in sizes:
        a, b = (torch.randn(n, n, device=mode.device, dtype=dtype) for _ in range(2))
        a @ b  # warm-up: cuBLAS handle and kernel choice
        sync()
        runs, began = 0, time.perf_counter()
        while time.perf_counter() - began < seconds:  # 10 queued products, then wait for them
            for _ in range(10):
                a @ b
            sync()
            runs += 10
        best[str(n)] = 2 * n**3 * runs / (time.perf_counter() - began)
    return {"dtype": str(dtype).removeprefix("torch."), "peak_flops": max(best.values()), "by_size": best,
            "afinar_matmul_flops_default": matmul_flops(dtype)}


def token_profile(recipe, model_dir: Path) -> dict:
    """Mean length, mean squared length and answer-token share of the run's training examples."""
    from afinar.chat_template import encode_chat, with_system
    from afinar.data import load_prepared
    from afinar.models import load_tokenizer

    tok = load_tokenizer(str(model_dir))
    data = Path(recipe.train.output_dir) / recipe.name / "data" / "train.jsonl"
    enc = [encode_chat(tok, with_system(ex.messages, recipe.system_prompt)) for ex in load_prepared(data)]
    lengths = [len(e.input_ids) for e in enc]
    return {"examples": len(enc), "mean_len": sum(lengths) / len(lengths), "max_len": max(lengths),
            "mean_sq_len": sum(n * n for n in lengths) / len(lengths),
            "label_share": sum(e.n_label_tokens for e in enc) / sum(lengths)}


def flops_per_token(model_dir: Path, profile: dict) -> float:
    """Model FLOPs per real training token as LoRA does the work: 4N, not the usual 6N. Per weight
    and token, forward 2 and backward 2 for the activation gradient, which must flow through every
    frozen layer to reach the adapters below it; frozen weights get no weight gradient, so 6N
    would credit 2N never computed. The output layer counts on answer tokens only (AnswerOnlyLM
    applies it there alone); the embedding is a lookup. Causal attention adds 2 L^2 x width per
    layer forward, twice that backward (bench/train_speed.py's `nominal_flops`); adapters: <1%."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())  # a tied embedding counted once
    embed, head = model.get_input_embeddings().weight.numel(), model.get_output_embeddings().weight.numel()
    body = total - embed - (0 if config.tie_word_embeddings else head)
    width = config.num_attention_heads * getattr(config, "head_dim", config.hidden_size // config.num_attention_heads)
    attention = 6 * config.num_hidden_layers * width * profile["mean_sq_len"] / profile["mean_len"]
    return 4 * (body + head * profile["label_share"]) + attention


def steady_tokens_per_s(run_dir: Path, skip: int) -> float | None:
    """Tokens/s over the steps after the first `skip` (metrics.jsonl's per-step rows)."""
    rows = [r for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip() and "loss" in (r := json.loads(ln))]
    tokens = [b["tokens"] - a["tokens"] for a, b in zip([{"tokens": 0}] + rows, rows)]
    timed = [(n, n / r["tokens_per_s"]) for n, r in zip(tokens, rows) if r["tokens_per_s"] > 0][skip:]
    return sum(n for n, _ in timed) / sum(s for _, s in timed) if timed else None


def run_one(plan: Plan, mode: Mode, model_dir: Path, data_file: Path, work: Path, peak_flops: float) -> dict:
    """Train one plan with afinar's loop: its speed, share of the peak, memory and doctor's estimate."""
    import torch

    from afinar.training import train
    from afinar.training.estimate import estimate_memory
    from afinar.training.runtime import resolve_setup

    recipe = make_recipe(plan, mode, model_dir, data_file, work)
    setup = resolve_setup(recipe)
    estimate = estimate_memory(recipe, setup.gradient_checkpointing)  # the call doctor.py makes
    cuda = mode.device == "cuda"
    free_memory()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    before, began = torch.cuda.memory_allocated() if cuda else 0, time.perf_counter()
    result = train(recipe, progress=False, log=lambda *a, **k: print("    |", *a, flush=True))
    wall = time.perf_counter() - began
    if cuda:
        measured, reserved = torch.cuda.max_memory_allocated() - before, torch.cuda.max_memory_reserved()
    else:  # the process's peak RSS, Python and libraries included: not comparable to the estimate
        measured = reserved = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    profile = token_profile(recipe, model_dir)
    per_token = flops_per_token(model_dir, profile)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    steady = steady_tokens_per_s(result.run_dir, mode.warmup_steps) or summary["tokens_per_s"]
    shutil.rmtree(result.run_dir, ignore_errors=True)
    return {"model": plan.model, "method": plan.method, "plan": plan._asdict(), "setup": setup.describe(),
            "gradient_checkpointing": setup.gradient_checkpointing, "steps": result.steps, "tokens": result.tokens,
            "train_seconds": result.seconds, "wall_s": round(wall, 1), "final_train_loss": result.final_train_loss,
            "tokens_per_s": summary["tokens_per_s"], "tokens_per_s_steady": steady, "token_profile": profile,
            "flops_per_token": per_token, "achieved_flops": per_token * steady, "share_of_peak": per_token * steady / peak_flops,
            "memory_source": "torch.cuda.max_memory_allocated" if cuda else "process peak RSS (CPU)",
            "measured_peak_bytes": measured, "reserved_peak_bytes": reserved, "allocated_before_bytes": before,
            "estimate": {**asdict(estimate), "peak_bytes": estimate.peak_bytes},
            "estimate_ratio": estimate.peak_bytes / max(1, measured)}


def verdicts(runs: list[dict], tiny: bool) -> list[dict]:
    """The issue's targets, one line each; on --cpu-tiny they are computed but do not apply."""
    out = []
    for r in (r for r in runs if "skipped" not in r and "error" not in r):
        name = f"{r['model']} {r['method']}"
        if name == "8b lora":
            out.append((f"{name}: >= {TARGET_SHARE_8B:.0%} of the matmul peak", r["share_of_peak"], r["share_of_peak"] >= TARGET_SHARE_8B))
        out.append((f"{name}: doctor's memory estimate / measured within {TARGET_ESTIMATE:.0%} of 1", r["estimate_ratio"],
                    abs(r["estimate_ratio"] - 1) <= TARGET_ESTIMATE))
    return [{"target": t, "value": v, "met": met, "applies": not tiny} for t, v, met in out]


# ----------------------------------------------------------------------------------------------
# driver


def preflight() -> str | None:
    """Why QLoRA cannot run here (None: it can). A bare GPU image may lack matplotlib, which only
    draws the loss plot: the PNG is skipped then, not the check."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        import afinar.training.plots as plots

        plots.plot_loss = lambda *a, **k: None  # runtime.write_outputs imports it at call time
        print("matplotlib is not installed: runs write no loss.png", flush=True)
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:  # bitsandbytes fails in many ways where it has no backend
        return f"import bitsandbytes failed: {type(exc).__name__}: {str(exc)[:200]}"
    return None


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu-tiny", action="store_true", default=os.environ.get("GPU_CHECK_TINY") == "1",
                   help="tiny shapes on CPU in fp32: the same code path in seconds (also GPU_CHECK_TINY=1)")
    p.add_argument("--only", nargs="+", choices=list(SHAPES), help="models to run (default: both)")
    p.add_argument("--no-qlora", action="store_true", help="skip the QLoRA run even when bitsandbytes works")
    p.add_argument("--budget-s", type=float, default=360, help="skip runs not started after this many seconds (default 360: all done in < 8 min)")
    p.add_argument("--out", type=Path, help="results JSON (default: $OUT/gpu_check.json, else bench/results/)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    import torch

    args = parse_args(argv)
    began = time.perf_counter()
    if not args.cpu_tiny and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device here; --cpu-tiny runs the same path on the CPU")
    mode = tiny_mode() if args.cpu_tiny else gpu_mode()
    if mode.tiny:  # tiny shapes gain nothing from threads; on a busy 2-core CI box 2 threads took 100x longer
        torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="afinar-gpu-check-"))
    pairs = [(r["pregunta"], r["respuesta"]) for r in faq_rows(148)]
    tokenizer = build_tokenizer([q + " " + a for q, a in pairs], mode.tokenizer_vocab)
    rows = long_faq(pairs, tokenizer, mode.examples, mode.lengths)
    data_file = work / "faq.jsonl"
    data_file.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    peak = matmul_peak(mode)
    device = (f"{torch.cuda.get_device_name(0)}, {torch.cuda.get_device_properties(0).total_memory / 1024**3:.0f} GiB, "
              f"CUDA {torch.version.cuda}" if mode.device == "cuda" else f"cpu, {torch.get_num_threads()} threads")
    report = {"mode": "cpu-tiny" if mode.tiny else "gpu", "device": f"{device}, torch {torch.__version__}",
              "machine": machine_info(), "matmul": peak, "models": {}, "runs": []}
    print(f"{report['device']}; {peak['dtype']} matmul peak {peak['peak_flops'] / 1e12:.2f} TFLOP/s (afinar doctor's "
          f"yardstick, estimate.matmul_flops: {peak['afinar_matmul_flops_default'] / 1e12:.2f}); {len(rows)} FAQ records", flush=True)
    skip_qlora = preflight() or ("--no-qlora" if args.no_qlora else None)
    try:
        for name in args.only or list(SHAPES):
            folder = work / f"llama-{name}"
            report["models"][name] = save_model(folder, name, tokenizer, mode)
            print(f"{name}: {report['models'][name]}", flush=True)
            for plan in (p for p in mode.plans if p.model == name):
                late = time.perf_counter() - began > args.budget_s and f"time budget ({args.budget_s:.0f} s) spent"
                report["runs"].append(attempt(plan, (plan.method == "qlora" and skip_qlora) or late,
                                              mode, folder, data_file, work, peak["peak_flops"]))
            shutil.rmtree(folder, ignore_errors=True)  # 15 GiB for the 8B
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return finish(report, args, began)


def attempt(plan: Plan, skip: str | None, *run_args) -> dict:
    """One run's figures, or why it was skipped or failed (an OOM in one run keeps the others')."""
    if skip:
        print(f"  {plan.model} {plan.method}: skipped ({skip})", flush=True)
        return {"model": plan.model, "method": plan.method, "skipped": skip}
    try:
        r = run_one(plan, *run_args)
    except Exception as exc:
        print(f"  {plan.model} {plan.method}: FAILED: {type(exc).__name__}: {exc}", flush=True)
        return {"model": plan.model, "method": plan.method, "error": f"{type(exc).__name__}: {exc}"[:2000]}
    finally:
        free_memory()
    gib = 1024**3
    print(f"  {r['model']} {r['method']}: {r['tokens_per_s']:.0f} tokens/s ({r['tokens_per_s_steady']:.0f} after warm-up), "
          f"{r['achieved_flops'] / 1e12:.2f} TFLOP/s = {r['share_of_peak']:.1%} of peak; memory {r['measured_peak_bytes'] / gib:.2f} GiB "
          f"measured, doctor {r['estimate']['peak_bytes'] / gib:.2f} GiB (ratio {r['estimate_ratio']:.2f}); {r['setup']}", flush=True)
    return r


def finish(report: dict, args, began: float) -> dict:
    """Verdicts, the JSON file, the summary lines; exit 1 when a run failed."""
    report["verdicts"] = verdicts(report["runs"], report["mode"] == "cpu-tiny")
    report["seconds"] = round(time.perf_counter() - began, 1)
    name = "gpu_check_tiny.json" if args.cpu_tiny else "gpu_check.json"
    out = args.out or (Path(os.environ["OUT"]) / name if os.environ.get("OUT") else HERE / "results" / name)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print()
    for v in report["verdicts"]:
        print(f"  {v['target']}: {v['value']:.2f} -> {('met' if v['met'] else 'NOT met') if v['applies'] else 'n/a on --cpu-tiny'}")
    print(f"\n{report['seconds']:.0f} s in all; results in {out}")
    if any("error" in r for r in report["runs"]):
        raise SystemExit(1)
    return report


if __name__ == "__main__":
    main()
