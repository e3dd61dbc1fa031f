"""Text features for the domain guard: normalised, stemmed content words and an IDF coverage score.

Why a lexical scorer beside the embedder: users type "horario sabado?" for "¿A qué hora abren los
sábados?", "q papeles piden pa la bibloteca" or "How much is the card?". The embedder ranks most
of these well but often puts two records within a hair of each other; the words of the query
break such ties. They are made robust step by step:
  1. `normalise`: lowercase, accents removed, "wi-fi" joined, punctuation to spaces;
  2. chat abbreviations expanded (q -> que, x -> por, pa -> para) and stop words dropped;
  3. Snowball stems (Spanish; English words get consistent stems on both sides);
  4. synonym groups (`resources/guard/sinonimos.txt`: general service vocabulary, Spanish and
     English) map every word of a group to one term, so "precio", "cuesta" and "fee" match;
  5. `IdfIndex.resolve` maps a query word the domain never uses onto a domain word it is a typo
     or a truncation of ("bibloteca", "biblio", "compu");
  6. `coverage` asks how much of the query's information (IDF mass) a record contains, a number in
     [0, 1] comparable across queries, unlike raw BM25 scores. Words never seen in the domain get
     the highest IDF, so a question full of foreign vocabulary scores low everywhere.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from functools import lru_cache
from importlib import resources

STOPWORDS = set("""
a al algo algun alguna algunas alguno algunos ante antes aqui asi aun bien cada como con contra cual cuales
cuando cuanto cuanta cuantos cuantas de del desde donde dos el ella ellas ello ellos en entre era eres es esa
esas ese eso esos esta estas este esto estos estoy fue ha hay hace hacer han has hasta la las le les lo los
mas me mi mis mucho muy nada ni no nos o os otra otro para pero poco por porque puede puedo pueden que quien
se sea ser si sin sobre son soy su sus tambien tan te tengo tiene tienen ti tu tus un una unas uno unos y ya
yo favor hola oye gracias dime quiero quisiera saber podrias puedes necesito explica explicame
the a an and or of to in on at for with by from is are was were be been do does did can could would should
i you he she it we they me my your our what which who whom how why when where this that these those there
please tell thanks hi hello about
""".split())


# Chat shorthand, expanded before stop words are removed.
ABBREVIATIONS = {"q": "que", "k": "que", "x": "por", "pa": "para", "xq": "porque", "pq": "porque",
                 "porq": "porque", "tb": "tambien", "tmb": "tambien", "d": "de", "info": "informacion"}


def normalise(text: str) -> str:
    """Lowercase, accents removed, short hyphenated forms joined (wi-fi, e-mail), punctuation to spaces."""
    decomposed = unicodedata.normalize("NFKD", text.lower())
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    plain = re.sub(r"\b([a-z]{1,2})-([a-z]+)\b", r"\1\2", plain)
    return re.sub(r"[^a-z0-9]+", " ", plain).strip()


@lru_cache(maxsize=1)
def _stemmer():
    import snowballstemmer

    return snowballstemmer.stemmer("spanish")


def _content_words(text: str) -> list[str]:
    words = (ABBREVIATIONS.get(w, w) for w in normalise(text).split())
    return [w for w in words if w not in STOPWORDS and (len(w) > 1 or w.isdigit())]


def synonym_groups() -> list[tuple[int, list[str]]]:
    """(line number, stems) of every group in `resources/guard/sinonimos.txt`."""
    text = (resources.files("afinar") / "resources" / "guard" / "sinonimos.txt").read_text(encoding="utf-8")
    return [(number, _stemmer().stemWords(_content_words(line))) for number, line in enumerate(text.splitlines(), 1)
            if line.strip() and not line.lstrip().startswith("#")]


@lru_cache(maxsize=1)
def synonyms() -> dict[str, str]:
    """Stem -> the stem that stands for its synonym group (the group's first word)."""
    table: dict[str, str] = {}
    for _, stems in synonym_groups():
        for stem in stems:
            table.setdefault(stem, stems[0])
    return table


def terms(text: str) -> list[str]:
    """Stemmed content words of a text, each synonym group folded into one term."""
    table = synonyms()
    return [table.get(s, s) for s in _stemmer().stemWords(_content_words(text))]


class IdfIndex:
    """IDF statistics over the indexed documents, and coverage of a query by one document."""

    def __init__(self, documents: list[list[str]]):
        self.n = len(documents)
        df = Counter(t for doc in documents for t in set(doc))
        self.idf = {t: math.log((self.n + 1) / (c + 0.5)) for t, c in df.items()}
        self.unseen_idf = math.log((self.n + 1) / 0.5)
        self.docs = [set(doc) for doc in documents]
        self._resolved: dict[str, str] = {}

    def weight(self, term: str) -> float:
        return self.idf.get(term, self.unseen_idf)

    def resolve(self, term: str) -> str:
        """A domain term the unknown `term` is a typo or a truncation of, else `term` itself."""
        if term in self.idf or len(term) < 4:
            return term
        if term not in self._resolved:
            self._resolved[term] = _closest(term, self.idf) or term
        return self._resolved[term]

    def coverage(self, query: list[str]) -> list[float]:
        """For every document, the share of the query's IDF mass it contains."""
        unique = {self.resolve(t) for t in query}
        total = sum(self.weight(t) for t in unique)
        if not total:
            return [0.0] * self.n
        return [sum(self.weight(t) for t in unique & doc) / total for doc in self.docs]


def _closest(term: str, vocabulary) -> str | None:
    """The vocabulary word that starts with `term` (a truncation: "biblio") or is one edit away
    (two for long words: "bibloteca"); the first letter must agree. None when there is none."""
    budget = 1 if len(term) < 8 else 2
    best, best_cost = None, budget + 1
    for word in vocabulary:
        if word[0] != term[0] or abs(len(word) - len(term)) > max(budget, 5):
            continue
        cost = 0 if word.startswith(term) and len(word) - len(term) <= 5 else _edits(term, word, budget)
        if cost < best_cost or (cost == best_cost and best is not None and len(word) < len(best)):
            best, best_cost = word, cost
    return best


def _edits(a: str, b: str, budget: int) -> int:
    """Levenshtein distance with adjacent swaps, or budget + 1 once it is certainly larger."""
    if abs(len(a) - len(b)) > budget:
        return budget + 1
    prev2, prev = None, list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb))
            if prev2 is not None and i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        if min(cur) > budget:
            return budget + 1
        prev2, prev = prev, cur
    return prev[-1]
