"""The loss-curve PNG written next to every run (train loss, smoothed, and eval loss)."""

from __future__ import annotations

from pathlib import Path


def plot_loss(metrics: list[dict], out: Path, title: str) -> Path | None:
    """Plot train and eval loss against optimizer steps; returns the PNG path (None if no data)."""
    train = [(m["step"], m["loss"]) for m in metrics if "loss" in m]
    evals = [(m["step"], m["eval_loss"]) for m in metrics if "eval_loss" in m]
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        steps, losses = zip(*train)
        ax.plot(steps, losses, color="#9bbbd4", linewidth=1, label="train loss")
        ax.plot(steps, _smooth(losses), color="#1f5f8b", linewidth=2, label="train loss (smoothed)")
    if evals:
        steps, losses = zip(*evals)
        ax.plot(steps, losses, "o-", color="#d1495b", label="eval loss (answer tokens)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(out)
    return out


def _smooth(values, weight: float = 0.8) -> list[float]:
    out, last = [], values[0]
    for v in values:
        last = weight * last + (1 - weight) * v
        out.append(last)
    return out
