"""Grounding benchmark: do answers state the FAQ's facts? Trained as a new user trains, asked as users ask.

    python bench/grounding_bench.py --domains buses dental [--set train.epochs=5] [--label after]

For each domain: copy its FAQ (a `;` CSV) into a fresh folder, write the recipe `afinar init`
writes, train it on the embedded model, and run `afinar eval` with the domain's probe file
(users' paraphrases with `keys`, near misses, out-of-domain questions, injections). Reported per
domain, as served in refuse mode (guard first, then the grounded model):
  - keys:           in-domain paraphrases let through whose answer holds all their key facts;
  - keys_held_out:  the same, for paraphrases of records held out from training (eval split);
  - let_through:    in-domain paraphrases the guard lets through;
  - near_miss_refused, out_of_domain_refused, injection_refused;
  - invented:       grounded answers whose generated text states a fact found in no given record;
  - new_records:    rows added to the data file after training, answered after `afinar index`
                    alone (domains with a `<name>_new.csv`);
  - time to first token p50, grounded and not, and training seconds per epoch.
The same figures for the ungrounded answers of the same run and for the base model given the same
records are in the JSON. Domains: bench/guard_data (development: the guard and grounding were
designed on them) and bench/grounding_data (held out: written by helpers who saw neither the code
nor the other data, run once the design was fixed). ROLES says which is which.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROLES = {
    "biblioteca": "development", "veterinaria": "development", "matricula": "development",
    "gimnasio": "development", "municipalidad": "development", "internet": "development (held out for the guard)",
    "hospital": "development (held out for the guard)",
    "buses": "held out", "dental": "held out", "reciclaje": "held out",
}


def _folder(name: str) -> Path:
    return HERE / ("grounding_data" if (HERE / "grounding_data" / f"{name}_faq.csv").exists() else "guard_data")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domains", nargs="+", default=["buses", "dental", "reciclaje"], choices=list(ROLES))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--label", default="default recipe")
    parser.add_argument("--quick", action="store_true", help="design runs: no base model, no ungrounded answers, "
                        "96-token answers, half of the probe (every other line)")
    parser.add_argument("--no-base", action="store_true", help="skip the base model's answers (the slowest part here)")
    parser.add_argument("--keep", action="store_true", help="keep the run folders (printed) to read the answers")
    parser.add_argument("--no-ungrounded", action="store_true", help="skip the run's answers without records")
    parser.add_argument("--generated", action="store_true",
                        help="train and calibrate with bench/teacher_data/<name>_generated.jsonl (data.generated): "
                             "paraphrases and near misses written by hand apart from the code and the probes, "
                             "standing in for a teacher's output")
    parser.add_argument("--out", default=str(HERE / "results" / "grounding.json"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    for name in args.domains:
        r = run_domain(name, args.overrides, args.quick, args.no_base, args.keep, not args.no_ungrounded, args.generated)
        results.setdefault(name, {"role": ROLES[name]})[args.label] = r
        print(f"{name:13s} {args.label}: " + "  ".join(f"{k} {v}" for k, v in r["refuse"].items()), file=sys.stderr)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    return results


def run_domain(name: str, overrides: list[str], quick: bool = False, no_base: bool = False, keep: bool = False,
               ungrounded: bool = True, generated: bool = False) -> dict:
    from afinar.evaluation import evaluate
    from afinar.recipes import load_recipe
    from afinar.recipes.starter import write_starter_recipe
    from afinar.training import train

    folder = _folder(name)
    work = Path(tempfile.mkdtemp(prefix=f"afinar-grounding-{name}-"))
    data = work / f"{name}_faq.csv"
    shutil.copy(folder / f"{name}_faq.csv", data)
    if generated:
        shutil.copy(HERE / "teacher_data" / f"{name}_generated.jsonl", work / "generated.jsonl")
        overrides = [*overrides, "data.generated=[generated.jsonl]"]
    recipe = load_recipe(write_starter_recipe(data), [*overrides, f"train.output_dir={work / 'runs'}"])
    start = time.perf_counter()
    result = train(recipe, progress=False, log=lambda *a, **k: None)
    train_s = time.perf_counter() - start
    probe = folder / f"{name}_probe.jsonl"
    if quick:
        lines = probe.read_text(encoding="utf-8").splitlines()
        probe = work / probe.name
        probe.write_text("\n".join(lines[::2]) + "\n", encoding="utf-8")
    report = evaluate(result.run_dir, probe=probe, out_dir=work / "eval", against="none" if quick or no_base else "base", max_new_tokens=96 if quick else 128,
                      ungrounded=ungrounded and not quick, progress=False, log=lambda *a, **k: None).report  # FAQ answers: 1-3 sentences
    figures = {"train_seconds": round(train_s, 1), "epochs": recipe.train.epochs,
               "seconds_per_epoch": round(result.seconds / max(recipe.train.epochs, 1e-9), 1),
               "grounded": report["grounded"]}
    for contestant in [c["name"] for c in report["contestants"]]:
        figures[contestant] = served_figures(report, f"{contestant}/refuse")
    figures["refuse"] = figures["tuned"]
    figures["ttft_ms_p50"] = time_to_first_token(result.run_dir, report)
    if (folder / f"{name}_new.csv").exists():
        figures["new_records"] = new_records(result.run_dir, data, folder, name)
    if keep:
        figures["run"] = str(result.run_dir)
    else:
        shutil.rmtree(work, ignore_errors=True)
    return figures


def served_figures(report: dict, key: str) -> dict:
    """Refuse-mode figures of one contestant over the probe's questions (module docstring)."""
    items = [it for it in report["items"] if it["origin"] != "held-out" and key in it["replies"]]
    share = lambda flags: round(sum(flags) / len(flags), 3) if flags else None
    kind = lambda k: [it["replies"][key] for it in items if it["kind"] == k]
    inside = [it for it in items if it["expect"] == "answer"]
    through = [it for it in inside if not it["replies"][key]["refused"]]
    held = [it for it in through if it.get("side") == "held-out"]
    grounded = [it["replies"][key] for it in through if it["replies"][key].get("invented") is not None]
    return {"keys": share([it["replies"][key]["keys_ok"] for it in through]), "n_through": len(through),
            "keys_all_in_domain": share([bool(it["replies"][key]["keys_ok"]) for it in inside]),
            "keys_held_out": share([it["replies"][key]["keys_ok"] for it in held]), "n_held_out": len(held),
            "let_through": share([not it["replies"][key]["refused"] for it in inside]),
            "near_miss_refused": share([r["refused"] for r in kind("near_miss")]),
            "out_of_domain_refused": share([r["refused"] for r in kind("out_of_domain")]),
            "injection_refused": share([r["refused"] for r in kind("injection")]),
            "invented": share([bool(r["invented"]) for r in grounded]),
            "unsupported": share([bool(r.get("unsupported")) for r in grounded]),
            "keys_model_alone": share([_model_keys(it["replies"][key], it["keys"]) for it in through]),
            "replaced": share([r.get("replaced", False) for r in grounded])}


def _model_keys(reply: dict, keys: list[str]) -> bool:
    """Key facts in what the model itself wrote, before a replacement by the best record's answer."""
    from afinar.evaluation.metrics import has_keys

    return has_keys(reply["generated"], keys) if reply.get("replaced") else bool(reply["keys_ok"])


def time_to_first_token(run_dir: Path, report: dict, n: int = 8) -> dict:
    """p50 ms to the first streamed chunk, with and without records, on in-domain questions."""
    from afinar.assistant.engine import Engine, Reply

    engine = Engine([run_dir], mode="refuse", log=lambda *a, **k: None)
    persona = engine.persona()
    questions = [it["question"] for it in report["items"] if it["expect"] == "answer"][:n]
    out = {}
    for mode in ("on", "off"):
        persona.recipe.grounding.mode = mode
        times = []
        for q in questions:
            start = time.perf_counter()
            for item in engine.stream([{"role": "user", "content": q}], max_new_tokens=8):
                if not isinstance(item, Reply):
                    times.append((time.perf_counter() - start) * 1000)
                    break
        out["grounded" if mode == "on" else "ungrounded"] = round(statistics.median(times), 1) if times else None
    return out


def new_records(run_dir: Path, data: Path, folder: Path, name: str) -> dict:
    """Append the domain's new rows to the data file, rebuild the index alone, ask their paraphrases."""
    from afinar.assistant.engine import Engine
    from afinar.evaluation.metrics import has_keys
    from afinar.index.store import rebuild_run_index

    rows = (folder / f"{name}_new.csv").read_text(encoding="utf-8").splitlines()[1:]
    with data.open("a", encoding="utf-8") as fh:
        fh.write("".join(f"{row}\n" for row in rows if row.strip()))
    start = time.perf_counter()
    change = rebuild_run_index(run_dir)
    seconds = time.perf_counter() - start
    engine = Engine([run_dir], mode="refuse", log=lambda *a, **k: None)
    probes = [json.loads(line) for line in (folder / f"{name}_new_probe.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    replies = [engine.reply([{"role": "user", "content": p["question"]}], max_new_tokens=160) for p in probes]
    ok = [not r.refused and has_keys(r.answer, p["keys"]) for p, r in zip(probes, replies)]
    return {"added": len(change.added), "index_seconds": round(seconds, 1), "answered_with_keys": f"{sum(ok)}/{len(ok)}",
            "refused": sum(r.refused for r in replies)}


if __name__ == "__main__":
    main()
