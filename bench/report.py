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
            "that same file behind afinar's guard, template and streaming; afinar's rows include the guard's decision "
            "(refuse mode) before each reply. The guard's time is `Engine.decide` on each of the demo's probe questions.", "", data["markdown"], ""]


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
    t = data["targets"]
    lines = ["## Domain guard on 30-row FAQs", "",
             f"Command: `{data['command'].strip()}`; embedder: {data['embedder']}. Each FAQ has 130 probes: 60 "
             "paraphrases as users type them (slang, typos, English, a situation described instead of named), 30 "
             "out-of-domain questions, 15 near misses, 15 injections, 10 in-domain questions wrapped in injections "
             "(bench/guard_data/). Thresholds are calibrated from the FAQ and afinar's bundled out-of-domain questions "
             f"only. Targets (issue 4): strict >= {t['strict']:.0%} routed right (in-domain answered with the right "
             f"record, the rest refused); refuse >= {t['refuse']:.0%} right with <= {t['wrongly_refused']:.0%} of "
             "in-domain questions refused. Only the held-out FAQs were never looked at while the guard's settings "
             "were chosen; the role of each FAQ is in bench/guard_bench.py (ROLES).", "",
             "| FAQ | role | strict | strict: answered wrongly | refuse | refuse: in-domain refused | targets met |",
             "|---|---|---:|---:|---:|---:|---|"]
    for name, domain in data["domains"].items():
        strict, refuse = domain["modes"]["strict"], domain["modes"]["refuse"]
        met = [f"strict {'yes' if strict['accuracy'] >= t['strict'] else '**no**'}",
               f"refuse {'yes' if refuse['accuracy'] >= t['refuse'] and refuse['wrongly_refused_in_domain'] <= t['wrongly_refused'] else '**no**'}"]
        lines.append(f"| {name} | {domain['role'].split(' (')[0]} | {strict['accuracy']:.1%} "
                     f"| {strict['let_through_wrongly']:.1%} | {refuse['accuracy']:.1%} "
                     f"| {refuse['wrongly_refused_in_domain']:.1%} | {', '.join(met)} |")
    lines += ["", "Strict: answered wrongly = a curated answer given for the wrong record or for a question to refuse "
              "(the rest of its misses are refusals). By kind of probe (correct/total) and the guard's time per question:", "",
              "| FAQ | mode | by kind | latency p50 |", "|---|---|---|---:|"]
    for name, domain in data["domains"].items():
        for mode, r in domain["modes"].items():
            kinds = ", ".join(f"{k} {v}" for k, v in r["by_kind"].items())
            lines.append(f"| {name} | {mode} | {kinds} | {r['latency_ms_p50']:.0f} ms |")
    return lines + [""]


def teacher_section(template: dict | None, generated: dict | None) -> list[str]:
    """Routing with template paraphrases vs with hand-written stand-ins for a teacher's output (issue 19)."""
    if not template or not generated or "domains" not in generated:
        return ["## Guard with teacher-written data", "", "Not run yet: `python bench/guard_bench.py --generated "
                "--domains gimnasio municipalidad buses dental reciclaje` and the same without `--generated`.", ""]
    lines = ["## Guard with teacher-written data", "",
             f"Command: `{generated['command'].strip()}`, against `{template['command'].strip()}`. The generated files "
             "(bench/teacher_data/) are hand-written stand-ins for a teacher's output (5 paraphrases per record, 30 near "
             "misses, 30 out-of-domain questions), written by helpers who saw only the FAQ: this machine has no capable "
             "teacher. Calibration rule chosen on gimnasio and municipalidad. Targets (issue 19): strict >= 95%, "
             "refuse >= 92% with <= 3% of in-domain questions refused.", "",
             "| FAQ | role | strict: template -> generated | refuse: template -> generated | in-domain refused |",
             "|---|---|---:|---:|---:|"]
    for name, g in generated["domains"].items():
        t = template["domains"].get(name)
        if not t:
            continue
        ts, tr, gs, gr = t["modes"]["strict"], t["modes"]["refuse"], g["modes"]["strict"], g["modes"]["refuse"]
        lines.append(f"| {name} | {g['role'].split(' (')[0]} | {ts['accuracy']:.1%} -> {gs['accuracy']:.1%} | "
                     f"{tr['accuracy']:.1%} -> {gr['accuracy']:.1%} | {tr['wrongly_refused_in_domain']:.1%} -> "
                     f"{gr['wrongly_refused_in_domain']:.1%} |")
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
            "streamed to its own client (src/afinar/assistant/batcher.py). Guard refusals never wait for the model. RSS grows "
            "during warm-up (allocator pools, KV caches of new shapes) and then levels off; the RSS every 5 s is in "
            "bench/results/serve_load.json.", ""]


def eval_speed_section(data: dict | None) -> list[str]:
    if data is None:
        return ["## Eval answering speed", "", "Not run yet: `python bench/eval_speed.py RUN`.", ""]
    m = data["machine"]
    lines = ["## Eval answering speed", "",
             f"Command: `{data['command']}` ({m['date'][:10]}, {m['cpu']}, {m['cores']} cores, adapter loaded as "
             f"{data['adapter_dtype']}). Each contestant answers the run's held-out split and probe as `afinar eval` does; "
             "\"defaults\": peft's modules, the adapter in fp32 (peft's default on a bf16 base) and transformers' DynamicCache; "
             "\"afinar\": merged, packed copies of the layers (assistant/weights.py) and the KV cache written in place. Best of "
             "the rounds, alternated in one process. "
             "Target (issue 20): half the time with identical answers.", "",
             "| contestant | defaults | afinar | speed-up | identical answers |", "|---|---:|---:|---:|---:|"]
    for name, r in data["contestants"].items():
        lines.append(f"| {name} | {r['defaults_s']:.1f} s | {r['afinar_s']:.1f} s | {r['speedup']:.2f}x | {r['identical']}/{r['answers']} |")
    return lines + [""]


def decode_weights_section(data: dict | None) -> list[str]:
    if data is None:
        return ["## Answering weights", "", "Not run yet: `python bench/decode_weights.py RUN`.", ""]
    m, peft, ours = data["machine"], data["setups"]["peft"], data["setups"]["afinar"]
    same, rows = data["identical_rows"], data["rows"]
    return ["## Answering weights: peft's modules against merged, packed copies", "",
            f"Command: `{data['command']}` ({m['date'][:10]}, {m['cpu']}, {m['cores']} cores). One process, the two set-ups "
            "alternated on one run: peft's modules (base weight and adapter apart) against afinar's copies of each layer "
            "with the adapter merged, bf16 ones packed for oneDNN (src/afinar/assistant/weights.py). Random prompt tokens; "
            "tokens/s of the whole batch, greedy, 64 new tokens; best of the rounds.", "",
            "| set-up | 600-token prefill | decode, batch 1 | decode, batch 8 | copies built in |", "|---|---:|---:|---:|---:|",
            f"| peft's modules | {peft['prefill_600_ms']} ms | {peft['batch_1_tokens_per_s']} tok/s "
            f"| {peft['batch_8_tokens_per_s']} tok/s | - |",
            f"| merged, packed copies | {ours['prefill_600_ms']} ms | {ours['batch_1_tokens_per_s']} tok/s "
            f"| {ours['batch_8_tokens_per_s']} tok/s | {ours['build_s']} s |", "",
            f"Identical greedy tokens: batch 1 {same['batch_1']}/{rows['batch_1']} rows, batch 8 {same['batch_8']}/{rows['batch_8']} "
            "(merging rounds each weight once in bf16, where peft rounds the base's product and the adapter's apart).", "",
            *_fidelity_lines(data.get("fidelity"))]


def _fidelity_lines(fidelity: dict | None) -> list[str]:
    if not fidelity:
        return []
    return ["Distance of the logits from the adapter computed in fp32 (the most exact answer at hand), as a share of "
            "what the adapter changes, and next-token agreement with it, on one question: "
            + "; ".join(f"{name} {f['error_share']:.1%}, {f['next_token_agreement']:.0%}" for name, f in fidelity.items())
            + ".", ""]


def targets_section(train: dict | None, scaling: dict | None, inference: dict | None) -> list[str]:
    """Every target of issue 9 with the figure measured against it, and what was tried where one
    is missed; printed by `make bench` as its closing table."""
    rows = []
    faq = next((r for r in (train or {}).get("results", []) if r["dataset"] == "faq"), None)
    if faq and "afinar" in faq:
        a = faq["afinar"]
        for rival, key in (("seeds' recipe", "seeds"), ("TRL SFTTrainer", "trl")):
            if f"speedup_vs_{key}" in faq:
                target = train["targets"][f"vs_{key}"]
                rows.append((f"training, FAQ: >= {target:g}x faster than the {rival}", f"{faq[f'speedup_vs_{key}']:.1f}x",
                             faq[f"speedup_vs_{key}"] >= target))
                rows.append((f"training, FAQ: eval loss <= the {rival}'s", f"{a['eval_loss_best']:.4f} vs {faq[key]['eval_loss_best']:.4f}",
                             faq[f"eval_loss_ok_vs_{key}"]))
        share = train["targets"]["share_of_bf16_peak"]
        precision = a.get("precision", "bf16")  # the peak of the precision afinar trained in
        rows.append((f"training, FAQ: >= {share:.0%} of the {precision} matmul peak", f"{a['share_of_matmul_peak']:.0%} "
                     f"({a['gflops']:.0f} of {train['matmul'][precision]['peak_gflops']:.0f} GFLOP/s)", a["share_of_matmul_peak"] >= share))
    if scaling:
        compiled = [r for r in scaling["results"] if r["compile"] == "on" and r["kind"] == "FAQ"]
        if compiled and train:
            best = compiled[0]["tokens_per_s"] * faq["nominal_flops_per_epoch"] / faq["tokens_per_epoch"] / 1e9 if faq else None
            if best:
                precision = (faq.get("afinar") or {}).get("precision", "bf16")
                share = best / train["matmul"][precision]["peak_gflops"]
                rows.append((f"training, FAQ, 1,000 examples, compiled layers: share of the {precision} peak", f"{share:.0%}",
                             share >= train["targets"]["share_of_bf16_peak"]))
        eager = {r["examples"]: r for r in scaling["results"] if r["compile"] == "off" and r["kind"] == "FAQ"}
        if len(eager) >= 2:
            per_k = [1000 * r["epoch_s"] / n for n, r in sorted(eager.items())]
            spread = max(per_k) / min(per_k)
            rows.append(("training time grows linearly (s per 1,000 examples, 100 -> 10,000)",
                         " / ".join(f"{x:.0f}" for x in per_k), spread < 1.25))
    if inference:
        rows += [(f"inference: {text}", measured, ok) for text, measured, ok in _inference_verdicts(inference)]
    if not rows:
        return []
    lines = ["## Targets (issue 9)", "", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {t} | {m} | {'yes' if ok else '**no**'} |" for t, m, ok in rows]
    missed = [t for t, _, ok in rows if not ok]
    if missed:
        lines += ["", "Missed: " + "; ".join(missed) + ". What was tried and measured (docs/speed.md): length-grouped "
                  "batches, the output layer only on answer tokens, bf16 base with fp32 adapters under autocast, no fp32 "
                  "round trip of the adapters' input, eager attention (faster than SDPA's CPU kernels here), and compiled "
                  "decoder layers for runs long enough to repay the compilation; packing, larger micro-batches and SDPA "
                  "with compile measured slower. What is left is mostly the adapters' own small matmuls (six per adapted "
                  "layer and step, forward and backward) and the elementwise work between matmuls that eager PyTorch runs "
                  "one kernel at a time; fusing the adapters of q/k/v and of gate/up into one matmul each is the next step."]
    return lines + [""]


def _inference_verdicts(data: dict) -> list[tuple[str, str, bool]]:
    from inference_speed import verdicts  # bench/ is on the path: this file runs from it

    long_prompt = _load("inference_speed_600.json")
    ttft = [v for v in verdicts(long_prompt["results"], None) if "time to first token" in v[0]] if long_prompt else []
    return verdicts(data["results"], data.get("guard")) + ttft


def grounding_section(data: dict | None) -> list[str]:
    """Issue 17's figures per FAQ and configuration (bench/grounding_bench.py), refuse mode."""
    if not data:
        return ["## Grounded answers", "", "Not run yet: `python bench/grounding_bench.py`.", ""]
    lines = ["## Grounded answers on unseen FAQs (refuse mode, embedded model)", "",
             "Command: `python bench/grounding_bench.py --domains NAME [--set grounding.mode=off]` (the recipe "
             "`afinar init` writes, trained and asked as users ask; docs/grounding.md). keys: in-domain paraphrases "
             "let through by the guard whose served answer holds all their key facts; model: the same for the "
             "model's own text, before a replacement by the best record's answer; held out: paraphrases of records "
             "held out from training. Targets (issue 17): keys >= 90%, held out >= 80%, invented <= 2%.", "",
             "| FAQ | role | recipe | keys | model | held out | let through | near misses refused | invented "
             "| ungrounded keys | new records | s/epoch | TTFT p50 grounded / not |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---|"]
    pct = lambda v: "-" if v is None else f"{v:.0%}"
    for name, runs in data.items():
        for label, r in runs.items():
            if label == "role":
                continue
            t, u, ttft = r["refuse"], r.get("ungrounded") or {}, r.get("ttft_ms_p50") or {}
            new = (r.get("new_records") or {}).get("answered_with_keys", "-")
            lines.append(f"| {name} | {runs['role']} | {label} | {pct(t['keys'])} ({t['n_through']}) "
                         f"| {pct(t.get('keys_model_alone'))} | {pct(t['keys_held_out'])} ({t['n_held_out']}) "
                         f"| {pct(t['let_through'])} | {pct(t['near_miss_refused'])} | {pct(t['invented'])} "
                         f"| {pct(u.get('keys'))} | {new} | {r['seconds_per_epoch']} "
                         f"| {ttft.get('grounded')} / {ttft.get('ungrounded')} ms |")
    return lines + [""]


def main() -> None:
    parts = ["# Benchmarks", "", "Written by `make bench` (bench/report.py) from bench/results/*.json; "
             "timings on shared 2-core machines are noisy, so compare ratios measured in one run.", ""]
    train, scaling, inference = _load("train_speed.json"), _load("train_scaling.json"), _load("inference_speed.json")
    targets = targets_section(train, scaling, inference)
    parts += targets
    parts += training_section(train)
    parts += scaling_section(scaling)
    parts += packing_section(_load("packing.json"))
    parts += inference_section(inference)
    long_prompt = _load("inference_speed_600.json")
    parts += inference_section(long_prompt)[2:] if long_prompt else []  # the same table, a grounded-size prompt
    parts += guard_section(_load("guard.json"))
    parts += teacher_section(_load("guard_template_heldout.json"), _load("guard_generated.json"))
    parts += grounding_section(_load("grounding.json"))
    parts += decode_weights_section(_load("decode_weights.json"))
    parts += eval_speed_section(_load("eval_speed.json"))
    trained = _load("eval_speed_banco_faq.json")  # a trained run: `python bench/eval_speed.py runs/recipes/banco-faq`
    parts += eval_speed_section(trained)[2:] if trained else []
    parts += serve_section(_load("serve_load.json"))
    OUT.write_text("\n".join(parts) + "\n", encoding="utf-8")
    print("\n".join(targets))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
