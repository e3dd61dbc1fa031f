"""The eval report: eval.json, PNG plots and a self-contained report.html, plus the terminal summary.

Every figure in the page and in the terminal is read from the report dict that `evaluate`
produced; nothing is typed in. The folder is written to a temporary name and renamed into place.
"""

from __future__ import annotations

import json
from pathlib import Path

from afinar.io import atomic_dir

# The figures compared between the run and its rival, and which direction is better.
VERDICT = [("eval loss", "loss", "eval_loss", -1), ("perplexity", "loss", "perplexity", -1),
           ("chrF", "held_out", "chrf", 1), ("ROUGE-L", "held_out", "rouge_l", 1)]


def write_report(report: dict, out: Path, metrics_path: Path | None = None) -> Path:
    """Write eval.json, loss.png, quality.png, domain.png and report.html into `out`."""
    from afinar.evaluation.html import render_html
    from afinar.evaluation.plots import plot_domain, plot_quality
    from afinar.training.plots import plot_loss

    with atomic_dir(out) as tmp:
        (tmp / "eval.json").write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        images = {"quality": plot_quality(report, tmp / "quality.png")}
        if metrics_path is not None and metrics_path.exists():
            rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
            images["loss"] = plot_loss(rows, tmp / "loss.png", f"{report['name']}: training and eval loss")
        name, summary = domain_set(report)
        if summary:
            images["domain"] = plot_domain(summary, tmp / "domain.png", f"domain behaviour ({name.replace('_', '-')} questions)")
        (tmp / "report.html").write_text(render_html(report, {k: v for k, v in images.items() if v}), encoding="utf-8")
    return out


def domain_set(report: dict) -> tuple[str, dict]:
    """The question set that measures domain behaviour: the probe when there is one (the guard
    knows the held-out questions, since strict mode must serve every curated answer)."""
    for name in ("probe", "held_out"):
        if name in report["summary"]:
            return name, report["summary"][name]
    return "", {}


def verdict(report: dict) -> list[dict]:
    """The run against its rival on each figure: values, and whether the run is better."""
    rival = report["contestants"][1]["name"]
    rows = []
    for label, section, metric, sign in VERDICT:
        if section == "loss":
            mine, theirs = report["loss"]["tuned"][metric], report["loss"][rival][metric]
        else:
            held = report["summary"].get(section, {})
            mine, theirs = (held.get("tuned/off") or {}).get(metric), (held.get(f"{rival}/off") or {}).get(metric)
        if mine is None or theirs is None:
            continue
        rows.append({"figure": label, "tuned": mine, "rival": theirs, "rival_name": rival,
                     "better": (mine - theirs) * sign > 0, "same": mine == theirs})
    return rows


def summary_lines(report: dict) -> list[str]:
    """A short terminal summary: the verdict, then domain behaviour per contestant and mode."""
    lines = []
    for row in verdict(report):
        word = "same" if row["same"] else ("better" if row["better"] else "WORSE")
        lines.append(f"  {row['figure']:<11} {row['rival_name']} {fmt_value(row['rival'])} -> tuned {fmt_value(row['tuned'])}  ({word})")
    name, summary = domain_set(report)
    if summary:
        lines.append(f"  domain behaviour on the {name.replace('_', '-')} questions:")
        lines.append(f"    {'contestant/mode':<22} {'correct':>8} {'ood refused':>12} {'injections':>11} {'wrongly refused':>16} {'keys':>6}")
        for key, s in summary.items():
            lines.append(f"    {key:<22} {fmt_share(s['correct']):>8} {fmt_share(s['out_of_domain_refused']):>12} "
                         f"{fmt_share(s['injection_refused']):>11} {fmt_share(s['wrongly_refused']):>16} {fmt_share(s['keys']):>6}")
    for row in report["regressions"][:3]:
        lines.append(f"  worse than {report['contestants'][1]['name']}: {row['question'][:70]!r} (chrF {row['delta']:+.1f})")
    return lines


def fmt_value(value) -> str:
    return "-" if value is None else (f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}")


def fmt_share(value) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"
