"""Faithfulness check: the facts a grounded answer states must come from its records or the question.

`check(answer, records, question)` says whether a grounded answer is faithful: it invents no
fact (`invented_facts`) and it is supported by its records (`copied_run`: it shares a run of at
least MIN_COPIED_WORDS words with one of their answers). The second test catches what the first
cannot: an answer that states nothing at all, which is what a 135M model gives when it fails to
use its record (it echoes the question back, "descuento estudiante?", or rewrites the record
into garbled words). Measured on the development FAQ gimnasio: those were most of the answers
that missed their key facts although the right record was in the prompt.

`invented_facts(answer, sources)` lists the facts of `answer` found in none of `sources` (the
records given with the question, and the question itself). A fact is what a user would act on
and a small model likes to make up:
  1. e-mail addresses and URLs (compared without case or a trailing dot);
  2. numbers, with what belongs to them: times (8:30), prices ($690, S/ 350), amounts with
     thousands separators (17.990, 1,500), decimals, percentages; compared as digit strings, so
     "17.990" and "17990" are one fact, and "8:00" matches "8:00" but not "18:00";
  3. proper names: capitalised words not at the start of a sentence (Zapopan, PulsoFit), and
     all-caps acronyms (RFC, DNI), compared without case or accents.
Written here because no library checks this for Spanish short answers; a regex pass costs
microseconds against the answer's milliseconds of generation.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from afinar.index.text import STOPWORDS

EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
URL = re.compile(r"(?:https?://|www\.)[^\s<>\"')]+|\b[\w-]+(?:\.[\w-]+)*\.(?:com|org|net|edu|gob|gov|mx|pe|cl|ar|co|es|io)(?:\.[a-z]{2})?(?:/[^\s<>\"')]*)?", re.I)
NUMBER = re.compile(r"\d+(?:[.,:]\d+)*")
WORD = re.compile(r"[^\W\d_][\w'-]*", re.U)
SENTENCE_END = re.compile(r"[.!?¡¿:;\n•*-]\s*$")
MARKER = re.compile(r"\[\d+\]")  # a record's number in the prompt, cited back


def invented_facts(answer: str, sources: list[str]) -> list[str]:
    """The e-mails, URLs, numbers and names in `answer` that appear in none of `sources`."""
    source = "\n".join(sources)
    known_links = {_link(m) for m in EMAIL.findall(source) + URL.findall(source)}
    known_numbers = {_digits(m) for m in NUMBER.findall(_without_links(source))}
    known_words = set(_fold(source).split()) | {_fold(w) for w in WORD.findall(source)}
    out: list[str] = []
    for link in EMAIL.findall(answer) + URL.findall(answer):
        if not any(_link(link) == k or ("@" not in link and _link(link).startswith(k)) for k in known_links):
            out.append(link.rstrip("."))
    text = MARKER.sub(" ", _without_links(answer))
    out += [n for n in NUMBER.findall(text) if _digits(n) not in known_numbers]
    out += [w for w in _names(text) if _fold(w) not in known_words]
    return list(dict.fromkeys(out))  # once each, in order


MIN_COPIED_WORDS = 4


@dataclass
class Verdict:
    invented: list[str]  # facts found in no record nor the question
    copied: int  # longest run of words shared with one of the records' answers

    @property
    def supported(self) -> bool:
        return self.copied >= MIN_COPIED_WORDS

    @property
    def faithful(self) -> bool:
        return not self.invented and self.supported


def check(answer: str, records: list[tuple[str, str]], question: str) -> Verdict:
    """Faithfulness of a grounded `answer` to its (question, answer) `records` (module docstring)."""
    sources = [f"{q}\n{a}" for q, a in records] + [question]
    return Verdict(invented_facts(answer, sources), max((copied_run(answer, a) for _, a in records), default=0))


REFUSAL_CHRF = 60.0  # a reply this close (chrF) to the refusal sentence is a refusal


def says_refusal(answer: str, refusal: str) -> bool:
    """Whether a generated answer is the recipe's refusal ("the records do not cover this"):
    it contains it (case, accents and spacing ignored), or its start is within chrF REFUSAL_CHRF
    of it. The one test, used by the engine and by `afinar eval`, so they cannot disagree."""
    if not refusal or not answer.strip():
        return False
    if " ".join(_fold(refusal).split()) in " ".join(_fold(answer).split()):
        return True
    from sacrebleu.metrics import CHRF

    return CHRF().sentence_score(answer[: int(1.5 * len(refusal))], [refusal]).score >= REFUSAL_CHRF


def copied_run(answer: str, source: str) -> int:
    """Length in words of the longest run of `answer` found word for word in `source` (case and
    accents ignored); dynamic programming over the two word lists, fine for answers this short."""
    a, b = _fold(answer).split(), _fold(source).split()
    a, b = [w.strip(".,;:!?¡¿()\"'") for w in a], [w.strip(".,;:!?¡¿()\"'") for w in b]
    best, previous = 0, [0] * (len(b) + 1)
    for x in a:
        current = [0] * (len(b) + 1)
        for j, y in enumerate(b, 1):
            if x == y and x:
                current[j] = previous[j - 1] + 1
                best = max(best, current[j])
        previous = current
    return best


def _names(text: str) -> list[str]:
    """Capitalised words that do not start a sentence, and acronyms (two or more capitals)."""
    names = []
    for match in WORD.finditer(text):
        word = match.group()
        before = text[: match.start()]
        starts_sentence = not before.strip() or bool(SENTENCE_END.search(before))
        common = _fold(word) in STOPWORDS  # "Hola, Puedes ...": a capitalised common word is no name
        if len(word) > 1 and not common and (word.isupper() or (word[0].isupper() and not starts_sentence)):
            names.append(word)
    return names


def _without_links(text: str) -> str:
    return URL.sub(" ", EMAIL.sub(" ", text))


def _link(text: str) -> str:
    return text.lower().rstrip("./").removeprefix("https://").removeprefix("http://").removeprefix("www.")


def _digits(number: str) -> str:
    """'17.990' and '17990' are one amount; a time keeps its colon ('8:00' is not '800')."""
    if ":" in number:
        return number
    return re.sub(r"[.,](?=\d{3}\b)", "", number).replace(",", ".")


def _fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))
