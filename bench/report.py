"""Write BENCHMARKS.md from the JSON results of the benchmark scripts (run by `make bench`).

    python bench/report.py            # reads bench/results/*.json, writes BENCHMARKS.md

Every figure in BENCHMARKS.md comes from a results file written by a run of the script named
beside it, with the machine it ran on; nothing is typed in by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "BENCHMARKS.md"


def _load(name: str) -> dict | None:
    path = HERE / "results" / name
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def training_section(data: dict | None) -> list[str]:
    if data is None or "targets" not in data:
        return ["## Training speed", "", "Not run yet: `python bench/train_speed.py`.", ""]
    m = data["machine"]
    return [
        "## Training speed: afinar vs the seeds' recipe and TRL", "",
        f"Command: `{data['command']}` ({data['bench_seconds']:.0f} s). Machine: {m['cpu']}, {m['cores']} cores, "
        f"torch {m['torch']}, transformers {m['transformers']}, peft {m['peft']}, TRL {m.get('trl')}, "
        f"bf16 on CPU: {m['cpu_bf16']}, {m['date'][:10]}.", "",
        "Same model (embedded SmolLM2-135M), same examples, same epochs, same LoRA settings (afinar's defaults), "
        "same learning rate and schedule, measured in one run, each contender in its own process (peak RSS is that "
        "process's high-water mark). The seeds' recipe: every example padded to 512 tokens, loss on all tokens, "
        "gradient checkpointing, fp32, batch 2 x accumulation 8. TRL: `SFTTrainer` with the fastest settings measured "
        "here (" + data["targets"]["trl_settings_text"] + "). afinar: its defaults. The eval loss is the mean "
        "cross-entropy on the answer tokens of the held-out examples, computed the same way for all three (fp32 base "
        "+ the trained adapter). GFLOP/s counts 4N FLOPs per real token (N = the model's parameters) plus causal "
        "attention, over the wall time of an epoch; the share is of the bf16 matmul throughput measured on this "
        "machine at the start of the run.", "",
        data["markdown"], "",
    ]


def scaling_section(data: dict | None) -> list[str]:
    if data is None:
        return ["## Training time vs data size", "", "Not run yet: `python bench/train_scaling.py`.", ""]
    return ["## Training time vs data size (afinar)", "",
            f"Command: `{data['command']}` ({data['bench_seconds']:.0f} s, {data['machine']['date'][:10]}). One epoch, "
            "afinar's defaults, nothing held out. The 10,000-example epoch is timed over its first steps and projected "
            "(its data is still checked, split and encoded in full). Compiled rows ran after a warm-up that filled "
            f"inductor's cache ({data['compile_warmup_s']:.0f} s here; once per machine and model). Linear growth shows "
            "as a flat tokens/s column.", "", data["markdown"], ""]


def inference_section(data: dict | None) -> list[str]:
    if data is None:
        return ["## Inference speed", "", "Not run yet: `python bench/inference_speed.py`.", ""]
    m = data["machine"]
    return ["## Inference speed: one reply at a time", "",
            f"Command: `{data['command']}` ({data['bench_seconds']:.0f} s, {m['date'][:10]}, llama-cpp-python "
            f"{m.get('llama_cpp')}). The same trained run answers a {data['prompt_tokens']}-token prompt (system prompt and "
            f"chat template included) with {data['new_tokens']} new tokens, greedy, end of turn held back; each contender "
            "in its own process, best of 3 after a warm-up. New tokens/s is over the whole reply, prefill included. "
            "llama.cpp runs the GGUF that `afinar export --to gguf` writes (adapter merged); `--engine llamacpp` runs "
            "that same file behind afinar's guard, template and streaming. The guard's time is `Engine.decide` on the "
            "demo's probe questions.", "", data["markdown"], ""]


def packing_section(data: dict | None) -> list[str]:
    if data is None:
        return []
    lines = ["## Packing vs length-grouped padding (afinar's loop, FAQ data)", "",
             f"Command: `{data['command']}`. Decides `train.packing: auto` (off: grouped padding) on CPU; "
             "not measured on a GPU.", "", "| layout | s / epoch | tokens/s | eval loss |", "|---|---:|---:|---:|"]
    for r in data["results"]:
        name = "packing" if r["packing"] == "on" else "length-grouped padding"
        lines.append(f"| {name} | {r['seconds']:.1f} | {r['tokens_per_s']:.0f} | {r['eval_loss']:.4f} |")
    return lines + [""]


def guard_section(data: dict | None) -> list[str]:
    if data is None or "domains" not in data:
        return ["## Domain guard", "", "Not run yet: `python bench/guard_bench.py`.", ""]
    lines = ["## Domain guard on 30-row FAQs", "",
             "Command: `python bench/guard_bench.py`. Each FAQ has 130 probes: 60 paraphrases as users type them "
             "(slang, typos, English), 30 out-of-domain questions, 15 near misses, 15 injections, 10 in-domain "
             "questions wrapped in injections (bench/guard_data/). `biblioteca` is the development set the guard's "
             "weights and calibration were chosen on; `veterinaria` and `matricula` were written afterwards by "
             "someone who saw neither, and are the held-out figures. Thresholds are calibrated from the FAQ and "
             "afinar's bundled out-of-domain questions only. Targets (issue 4): strict >= 95% correct; refuse "
             ">= 85% correct with <= 5% of in-domain questions refused.", "",
             "| FAQ | mode | accuracy | in-domain wrongly refused | by kind (correct/total) | guard latency p50 |",
             "|---|---|---:|---:|---|---:|"]
    for name, domain in data["domains"].items():
        for mode, r in domain["modes"].items():
            kinds = ", ".join(f"{k} {v}" for k, v in r["by_kind"].items())
            lines.append(f"| {name} | {mode} | {r['accuracy']:.1%} | {r['wrongly_refused_in_domain']:.1%} | {kinds} "
                         f"| {r['latency_ms_p50']:.0f} ms |")
    return lines + [""]


def serve_section(data: dict | None) -> list[str]:
    if data is None:
        return ["## Serving under load", "", "Not run yet: `python bench/serve_load.py`.", ""]
    return ["## Serving under load", "",
            f"Command: `{data['command']}` ({data['date']}, {data['cpu']} cores). `afinar serve` in its own process on "
            f"loopback; each client streams {data['max_tokens']}-token replies to questions of the demo's probe (in and "
            "out of the domain) for the whole time. Target (issue 6): zero errors, no memory growth.", "",
            data["markdown"], "",
            "max batch 1: replies generated one at a time (the time to first token is the wait in the queue); "
            "16 (the default): replies asked at the same time are generated in one left-padded batch, each still "
            "streamed to its own client (src/afinar/batcher.py). Guard refusals never wait for the model. RSS grows "
            "during warm-up (allocator pools, KV caches of new shapes) and then levels off; the RSS every 5 s is in "
            "bench/results/serve_load.json.", ""]


def main() -> None:
    parts = ["# Benchmarks", "", "Written by `make bench` (bench/report.py) from bench/results/*.json; "
             "timings on shared 2-core machines are noisy, so compare ratios measured in one run.", ""]
    parts += training_section(_load("train_speed.json"))
    parts += scaling_section(_load("train_scaling.json"))
    parts += packing_section(_load("packing.json"))
    parts += inference_section(_load("inference_speed.json"))
    parts += guard_section(_load("guard.json"))
    parts += serve_section(_load("serve_load.json"))
    OUT.write_text("\n".join(parts) + "\n", encoding="utf-8")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
