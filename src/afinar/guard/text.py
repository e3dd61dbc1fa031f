"""Text features for the domain guard: normalised, stemmed content words and an IDF coverage score.

Why our own lexical scorer: users type "horario sabado?" for "¿A qué hora abren los sábados?".
Accent-free lowercase text, Snowball stems (Spanish, with English suffixes handled by the same
stemmer consistently on both sides) and stop-word removal make those match; `coverage` then asks
how much of the query's information (IDF mass) a record contains, a number in [0, 1] that is
comparable across queries, unlike raw BM25 scores. Words never seen in the domain get the highest
IDF, so a question full of foreign vocabulary scores low everywhere.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from functools import lru_cache

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


def normalise(text: str) -> str:
    """Lowercase, accents removed, punctuation to spaces."""
    decomposed = unicodedata.normalize("NFKD", text.lower())
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    return re.sub(r"[^a-z0-9]+", " ", plain).strip()


@lru_cache(maxsize=1)
def _stemmer():
    import snowballstemmer

    return snowballstemmer.stemmer("spanish")


def terms(text: str) -> list[str]:
    """Stemmed content words of a text."""
    words = [w for w in normalise(text).split() if w not in STOPWORDS and (len(w) > 1 or w.isdigit())]
    return _stemmer().stemWords(words)


class IdfIndex:
    """IDF statistics over the indexed documents, and coverage of a query by one document."""

    def __init__(self, documents: list[list[str]]):
        self.n = len(documents)
        df = Counter(t for doc in documents for t in set(doc))
        self.idf = {t: math.log((self.n + 1) / (c + 0.5)) for t, c in df.items()}
        self.unseen_idf = math.log((self.n + 1) / 0.5)
        self.docs = [set(doc) for doc in documents]

    def weight(self, term: str) -> float:
        return self.idf.get(term, self.unseen_idf)

    def coverage(self, query: list[str]) -> list[float]:
        """For every document, the share of the query's IDF mass it contains."""
        unique = set(query)
        total = sum(self.weight(t) for t in unique)
        if not total:
            return [0.0] * self.n
        return [sum(self.weight(t) for t in unique & doc) / total for doc in self.docs]
