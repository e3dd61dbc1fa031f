"""The eval report's PNG plots: answer quality and loss per contestant, domain behaviour per mode."""

from __future__ import annotations

from pathlib import Path

COLOURS = ["#1f5f8b", "#d1495b", "#edae49", "#66a182", "#8d6a9f", "#00798c"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path) -> Path:
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.tight_layout()
    fig.savefig(tmp)
    _pyplot().close(fig)
    tmp.replace(out)
    return out


def plot_quality(report: dict, out: Path) -> Path | None:
    """Held-out answers (chrF, ROUGE-L; the model alone) and eval loss, one bar per contestant."""
    held = report["summary"].get("held_out", {})
    names = [c["name"] for c in report["contestants"]]
    scores = {m: [(held.get(f"{n}/off") or {}).get(m) for n in names] for m in ("chrf", "rouge_l")}
    losses = [(n, report["loss"][n]["eval_loss"]) for n in names if report["loss"][n]["eval_loss"] is not None]
    if not any(v is not None for vs in scores.values() for v in vs) and not losses:
        return None
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6), dpi=110, gridspec_kw={"width_ratios": [3, 2]})
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        values = [scores[m][k] or 0 for m in scores]
        bars = left.bar([x + k * width for x in range(len(scores))], values, width, label=name, color=COLOURS[k % len(COLOURS)])
        left.bar_label(bars, fmt="%.1f", fontsize=8)
    left.set_xticks([x + width * (len(names) - 1) / 2 for x in range(len(scores))], ["chrF", "ROUGE-L"])
    left.set_title("held-out answers (higher is better)")
    left.set_ylim(0, 100)
    left.legend(fontsize=8)
    if losses:
        bars = right.bar([n for n, _ in losses], [v for _, v in losses], color=[COLOURS[names.index(n) % len(COLOURS)] for n, _ in losses])
        right.bar_label(bars, fmt="%.3f", fontsize=8)
    right.set_title("eval loss (lower is better)")
    for ax in (left, right):
        ax.grid(axis="y", alpha=0.3)
    return _save(fig, out)


DOMAIN_BARS = [("correct", "routed correctly"), ("out_of_domain_refused", "out-of-domain refused"),
               ("injection_refused", "injections refused"), ("wrongly_refused", "in-domain wrongly refused")]


def plot_domain(summary: dict[str, dict], out: Path, title: str) -> Path | None:
    """Domain behaviour (shares, %) for each contestant/mode of one question set."""
    rows = [(key, s) for key, s in summary.items() if s.get("correct") is not None]
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 0.5 + 0.9 * len(rows)), dpi=110)
    height = 0.8 / len(DOMAIN_BARS)
    for k, (metric, label) in enumerate(DOMAIN_BARS):
        values = [100 * (s.get(metric) or 0) for _, s in rows]
        bars = ax.barh([y + k * height for y in range(len(rows))], values, height, label=label, color=COLOURS[k])
        ax.bar_label(bars, fmt="%.0f%%", fontsize=7, padding=2)
    ax.set_yticks([y + height * (len(DOMAIN_BARS) - 1) / 2 for y in range(len(rows))], [key for key, _ in rows])
    ax.invert_yaxis()
    ax.set_xlim(0, 112)
    ax.set_xlabel("% of questions")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12 - 0.3 / len(rows)), ncol=len(DOMAIN_BARS), frameon=False)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, out)
