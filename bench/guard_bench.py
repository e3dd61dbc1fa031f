"""Guard benchmark: route 30-row FAQs' probe questions in strict and refuse mode.

    python bench/guard_bench.py [--domains biblioteca internet ...]

Each domain is `bench/guard_data/<name>_faq.csv` (30 rows) and `<name>_probe.jsonl`: 60 paraphrases
as users type them (slang, typos, English, a situation described instead of named), 30
out-of-domain questions, 15 near misses, 15 injection attempts and 10 in-domain questions wrapped
in an injection. Every domain but `biblioteca` was written by someone who had seen neither the
guard's code nor the other domains. What each one was used for is in ROLES, and reported with
its figures: only the held-out domains were never looked at while the guard's settings were
chosen. The guard is built as `afinar train` builds it (records: each row's question plus one
template paraphrase; calibrated on the bundled out-of-domain pool). Reports per domain, mode and
kind of probe: accuracy, in-domain questions wrongly refused, and the guard's latency per question.
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
ROLES = {
    "biblioteca": "development",
    "veterinaria": "development since the e5 guard (held out for the MiniLM guard before it)",
    "matricula": "development since the e5 guard (held out for the MiniLM guard before it)",
    "gimnasio": "development (written for the e5 guard; its failures were studied)",
    "municipalidad": "development (written for the e5 guard; its failures were studied)",
    "internet": "held out (written for the e5 guard, run once its settings were fixed)",
    "hospital": "held out (written for the e5 guard, run once its settings were fixed)",
}
# bench/grounding_data: written for grounding by helpers who saw no code; held out from the design of
# the calibration with generated data (`--generated`), which was chosen on gimnasio and municipalidad
GROUNDING_ROLES = {name: "held out (grounding's FAQs; also for the calibration with generated data)"
                   for name in ("buses", "dental", "reciclaje")}
GROUNDING_DOMAINS = set(GROUNDING_ROLES)
# Targets (issue 4): strict routes >= 95% right; refuse >= 85% right with <= 5% of in-domain refused.
TARGET_STRICT, TARGET_REFUSE, TARGET_WRONGLY_REFUSED = 0.95, 0.85, 0.05


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domains", nargs="+", default=list(ROLES), choices=list(ROLES) + list(GROUNDING_ROLES))
    parser.add_argument("--paraphrases", type=int, default=1, help="template paraphrases per row (the recipe default)")
    parser.add_argument("--generated", action="store_true",
                        help="also use bench/teacher_data/<name>_generated.jsonl (paraphrases and near misses written "
                             "by hand apart from the code and the probes, standing in for a teacher's output)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    results = {"command": "python bench/guard_bench.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "embedder": _embedder_name(),
               "targets": {"strict": TARGET_STRICT, "refuse": TARGET_REFUSE, "wrongly_refused": TARGET_WRONGLY_REFUSED},
               "generated": args.generated,
               "domains": {name: {"role": {**ROLES, **GROUNDING_ROLES}[name], **run_domain(name, args.paraphrases, args.generated)}
                           for name in args.domains}}
    for name, r in results["domains"].items():
        for mode, m in r["modes"].items():
            print(f"{name:13s} {mode:7s} accuracy {m['accuracy']:.3f}  in-domain wrongly refused "
                  f"{m['wrongly_refused_in_domain']:.3f}  let through wrongly {m['let_through_wrongly']:.3f}  "
                  f"{m['by_kind']}  p50 {m['latency_ms_p50']} ms", file=sys.stderr)
    print(json.dumps(results, indent=2, ensure_ascii=False))
    out = Path(args.out or HERE / "results" / ("guard_generated.json" if args.generated else "guard.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    return results


def _embedder_name() -> str:
    from afinar.index import load_embedder

    return load_embedder().name


def run_domain(name: str, paraphrases: int, generated: bool = False) -> dict:
    from afinar.data import check_data
    from afinar.data.augment import bundled_negatives, paraphrase
    from afinar.data.generated import check_generated
    from afinar.index import DomainGuard, Record, load_embedder

    folder = HERE / ("grounding_data" if name in GROUNDING_DOMAINS else "guard_data")
    report = check_data([folder / f"{name}_faq.csv"])
    rng = random.Random(0)
    records = [Record([ex.first_user(), *paraphrase(ex.first_user(), rng, paraphrases)], ex.last_answer(), str(i + 1))
               for i, ex in enumerate(report.examples)]
    items = check_generated([HERE / "teacher_data" / f"{name}_generated.jsonl"], report.examples)[0] if generated else []
    by_question = {r.questions[0]: r for r in records}
    for item in items:
        if item.kind == "paraphrase":  # as `afinar train` indexes them (index/store.py)
            by_question[item.record].questions.append(item.question)
    t0 = time.perf_counter()
    guard = DomainGuard(records, load_embedder())
    thresholds = guard.calibrate(list(bundled_negatives()[0]), [i.question for i in items if i.kind == "paraphrase"],
                                 [i.question for i in items if i.kind != "paraphrase"])
    build_s = time.perf_counter() - t0
    probe_path = folder / f"{name}_probe.jsonl"
    probes = [json.loads(line) for line in probe_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {"build_seconds": round(build_s, 2), "thresholds": thresholds.__dict__,
            "modes": {mode: run_mode(guard, probes, mode) for mode in ("strict", "refuse")}}


def run_mode(guard, probes, mode: str) -> dict:
    by_kind = defaultdict(lambda: [0, 0])
    latencies, wrong_refusals, in_domain, failures, wrong_answers = [], 0, 0, [], 0
    for p in probes:
        d = guard.check(p["question"], mode)
        latencies.append(d.latency_ms)
        if p["expect"] == "answer":
            in_domain += 1
            wrong_refusals += not d.in_domain
            ok = d.in_domain and (mode != "strict" or d.record.source == str(p["source"]))
        else:
            ok = not d.in_domain
        wrong_answers += d.in_domain and not ok  # let through: a wrong record, or anything for a question to refuse
        by_kind[p["kind"]][0] += ok
        by_kind[p["kind"]][1] += 1
        if not ok:
            failures.append({"q": p["question"], "kind": p["kind"], "score": round(d.score, 3),
                             "matched": d.record.source if d.record else None})
    correct = sum(v[0] for v in by_kind.values())
    return {"accuracy": round(correct / len(probes), 3), "wrongly_refused_in_domain": round(wrong_refusals / in_domain, 3),
            "let_through_wrongly": round(wrong_answers / len(probes), 3),
            "by_kind": {k: f"{v[0]}/{v[1]}" for k, v in by_kind.items()},
            "latency_ms_p50": statistics.median(latencies), "latency_ms_max": max(latencies), "failures": failures}


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
