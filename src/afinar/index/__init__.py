"""The domain's index: its records, how a question is scored against them, and the guard.

Built at the end of `afinar train` from every record of the run's data (store.py) and saved in
runs/<name>/guard/; chat, ask, serve and eval load it. A question is cleaned of injection
wrappers (injection.py), embedded (embedder.py: multilingual-e5-small) and matched by words
(text.py), and scored against every record (guard.py); the guard decides from that ranking.

    guard = build_run_guard(run_dir)                # store.py
    decision = guard.check("¿a qué hora abren?", mode="refuse")
    guard = load_run_guard(run_dir)                 # what chat, ask and serve use
"""

from afinar.index.embedder import load_embedder
from afinar.index.guard import Decision, DomainGuard, Record, Thresholds

__all__ = ["Decision", "DomainGuard", "Record", "Thresholds", "load_embedder"]
