"""Guard benchmark: route an unseen 30-row FAQ's probe questions in strict and refuse mode.

    python bench/guard_bench.py [--faq bench/guard_data/biblioteca_faq.csv] [--probe ...jsonl]

The FAQ and probes (paraphrases, out-of-domain, near misses, injections) were written for this
benchmark and are never used to tune afinar's defaults. Reports per mode and per kind of probe:
accuracy, in-domain questions wrongly refused, and the guard's latency per question.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faq", default=str(HERE / "guard_data" / "biblioteca_faq.csv"))
    parser.add_argument("--probe", default=str(HERE / "guard_data" / "biblioteca_probe.jsonl"))
    parser.add_argument("--paraphrases", type=int, default=2)
    parser.add_argument("--out", default=str(HERE / "results" / "guard.json"))
    args = parser.parse_args(argv)

    from afinar.data import check_data
    from afinar.data.augment import bundled_negatives, paraphrase
    from afinar.guard import DomainGuard, Record, load_embedder

    report = check_data([args.faq])
    rng = random.Random(0)
    records = [Record([ex.first_user(), *paraphrase(ex.first_user(), rng, args.paraphrases)], ex.last_answer(), str(i + 1))
               for i, ex in enumerate(report.examples)]
    t0 = time.perf_counter()
    guard = DomainGuard(records, load_embedder())
    train_pool, _ = bundled_negatives()
    thresholds = guard.calibrate(list(train_pool))
    build_s = time.perf_counter() - t0
    probes = [json.loads(line) for line in Path(args.probe).read_text(encoding="utf-8").splitlines() if line.strip()]
    results = {"build_seconds": round(build_s, 2), "thresholds": thresholds.__dict__, "modes": {}}
    for mode in ("strict", "refuse"):
        results["modes"][mode] = run_mode(guard, probes, mode)
    print(json.dumps(results, indent=2, ensure_ascii=False))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    return results


def run_mode(guard, probes, mode: str) -> dict:
    by_kind = defaultdict(lambda: [0, 0])
    latencies, wrong_refusals, in_domain, failures = [], 0, 0, []
    for p in probes:
        d = guard.check(p["question"], mode)
        latencies.append(d.latency_ms)
        if p["expect"] == "answer":
            in_domain += 1
            wrong_refusals += not d.in_domain
            ok = d.in_domain and (mode != "strict" or d.record.source == str(p["source"]))
        else:
            ok = not d.in_domain
        by_kind[p["kind"]][0] += ok
        by_kind[p["kind"]][1] += 1
        if not ok:
            failures.append({"q": p["question"], "kind": p["kind"], "score": round(d.score, 3),
                             "matched": d.record.source if d.record else None})
    correct = sum(v[0] for v in by_kind.values())
    return {"accuracy": round(correct / len(probes), 3), "wrongly_refused_in_domain": round(wrong_refusals / in_domain, 3),
            "by_kind": {k: f"{v[0]}/{v[1]}" for k, v in by_kind.items()},
            "latency_ms_p50": statistics.median(latencies), "latency_ms_max": max(latencies), "failures": failures}


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
