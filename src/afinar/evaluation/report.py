"""The eval report's files: eval.json, PNG plots and a self-contained report.html.

Every figure is read from the report dict that `evaluate` produced (its reading, the verdict and
the terminal summary, is `summary.py`; the page is `html.py`). The folder is written to a
temporary name and renamed into place.
"""

from __future__ import annotations

import json
from pathlib import Path

from afinar.evaluation.summary import domain_set
from afinar.io import atomic_dir

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
