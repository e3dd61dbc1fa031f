"""Answering with peft's modules against answering through afinar's merged, packed copies
(`assistant/weights.py`), alternated in one process on one run.

    python bench/decode_weights.py                 # a quick run of the demo recipe
    python bench/decode_weights.py runs/banco-faq  # any trained run (QLoRA runs too)

For each set-up, on random prompt tokens: the prefill of a 600-token prompt (median of 3) and
greedy decoding of 64 tokens at batch 1 and batch 8 (tokens/s of the whole batch), with the
tokens compared between the set-ups; and how far each set-up's logits on one real question lie
from the most exact answer at hand (the adapter computed in fp32 on the same base), as a share of
what the adapter changes (the distance from the base model's logits). Writes
bench/results/decode_weights.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _time(model, ids, new_tokens):
    """(prefill seconds, decode seconds, tokens) of greedy decoding from `ids`."""
    import torch

    from afinar.assistant.generation import cache_keyword, growing_cache

    with torch.no_grad():
        cache = {cache_keyword(model): growing_cache(new_tokens)}
        began = time.perf_counter()
        token = model(input_ids=ids, use_cache=True, logits_to_keep=1, **cache).logits[:, -1].argmax(-1, keepdim=True)
        prefilled, tokens = time.perf_counter(), [token]
        for _ in range(new_tokens - 1):
            token = model(input_ids=token, use_cache=True, logits_to_keep=1, **cache).logits[:, -1].argmax(-1, keepdim=True)
            tokens.append(token)
        return prefilled - began, time.perf_counter() - prefilled, torch.cat(tokens, 1).tolist()


QUESTION = "¿Qué es una pila y en qué se diferencia de una cola? Dame un ejemplo en Python."


def _fidelity(run, weights) -> dict:
    """Logit error of peft's modules and of afinar's copies against the fp32-adapter answer,
    over what the adapter changes; and how often their next-token choice agrees with it."""
    import torch

    model, tokenizer = run.model, run.tokenizer
    ids = torch.tensor([tokenizer(QUESTION, add_special_tokens=False)["input_ids"]])

    def logits():
        with torch.no_grad():
            return model(input_ids=ids).logits.float()

    weights.release()
    lora = [p for n, p in model.named_parameters() if "lora_" in n]
    loaded = [p.data for p in lora]
    for p in lora:
        p.data = p.data.float()
    exact = logits()
    for p, data in zip(lora, loaded):
        p.data = data
    with model.disable_adapter():
        effect = (logits() - exact).norm().item()
    got = {"peft": logits()}
    weights.use("default")
    got["afinar"] = logits()
    weights.release()
    return {s: {"error_share": round((g - exact).norm().item() / effect, 3),
                "next_token_agreement": round((g.argmax(-1) == exact.argmax(-1)).float().mean().item(), 3)}
            for s, g in got.items()}


def main() -> None:
    import torch

    from afinar.assistant.generation import load_run
    from afinar.assistant.weights import AnswerWeights
    from machine import machine_info

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, nargs="?", help="a trained run (default: a quick run of the demo recipe)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "decode_weights.json")
    args = parser.parse_args()
    if args.run is None:
        from machine import quick_demo_run

        args.run = quick_demo_run()
    run = load_run(args.run)
    model = run.model
    weights = AnswerWeights(model)
    fidelity = _fidelity(run, weights)
    torch.manual_seed(0)
    prompts = {"prefill_600": torch.randint(100, 20000, (1, 600)), "batch_1": torch.randint(100, 20000, (1, 300)),
               "batch_8": torch.randint(100, 20000, (8, 300))}
    figures: dict = {}
    tokens: dict = {}
    for rnd in range(args.rounds):
        for setup in ("peft", "afinar"):
            began = time.perf_counter()
            copies = weights.use("default") if setup == "afinar" else (weights.release() or False)
            ready = time.perf_counter() - began
            row = figures.setdefault(setup, {"copies": copies, "build_s": round(ready, 2)})
            row.setdefault("prefill_600_ms", []).append(
                1000 * statistics.median(_time(model, prompts["prefill_600"], 1)[0] for _ in range(3)))
            for batch in ("batch_1", "batch_8"):
                _, seconds, made = _time(model, prompts[batch], 64)
                row.setdefault(f"{batch}_tokens_per_s", []).append(len(made) * 63 / seconds)
                tokens[setup, batch] = made
            print(f"round {rnd + 1}: {setup:6s} prefill {row['prefill_600_ms'][-1]:6.0f} ms, decode batch 1 "
                  f"{row['batch_1_tokens_per_s'][-1]:5.1f} tok/s, batch 8 {row['batch_8_tokens_per_s'][-1]:6.1f} tok/s", flush=True)
    weights.release()
    summary = {s: {"copies": r["copies"], "build_s": r["build_s"], "prefill_600_ms": round(min(r["prefill_600_ms"])),
                   **{k: round(max(v), 1) for k, v in r.items() if k.endswith("_per_s")}} for s, r in figures.items()}
    same = {b: sum(x == y for x, y in zip(tokens["peft", b], tokens["afinar", b])) for b in ("batch_1", "batch_8")}
    print(json.dumps(summary, indent=1), "identical rows:", same, "fidelity:", fidelity)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": f"python bench/decode_weights.py {args.run}", "machine": machine_info(),
                                    "run": str(args.run), "setups": summary, "identical_rows": same, "fidelity": fidelity,
                                    "rows": {b: len(tokens["peft", b]) for b in same}}, indent=2) + "\n")


if __name__ == "__main__":
    main()
