"""Evaluation: `evaluate(run_dir, ...)` compares a tuned run with its base (or another run, or an
OpenAI-compatible endpoint) on the held-out split and a probe file, and writes runs/<name>/eval/."""

from afinar.evaluation.evaluate import EvalResult, evaluate
from afinar.evaluation.probe import EvalItem, load_probe

__all__ = ["EvalItem", "EvalResult", "evaluate", "load_probe"]
