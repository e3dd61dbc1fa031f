"""Domain guard: keep an assistant inside its domain (refuse mode) or on curated answers (strict).

    guard = build_run_guard(run_dir)                # at the end of `afinar train` (store.py)
    decision = guard.check("¿a qué hora abren?", mode="refuse")
    guard = load_run_guard(run_dir)                 # what chat, ask and serve use
"""

from afinar.guard.embedder import load_embedder
from afinar.guard.guard import Decision, DomainGuard, Record, Thresholds

__all__ = ["Decision", "DomainGuard", "Record", "Thresholds", "load_embedder"]
