"""Data augmentation for `prepare`: template paraphrases and out-of-domain negatives.

Paraphrases: a few hundred examples teach a model the exact wording of each question; users
type differently (no "¿", lower case, a preamble, "pregunta rápida: ..."). Template rewrites in
the question's language (Spanish or English) add that variety without a model in the loop.

Typed variants (`typed_variant`): how users really type a question in a chat (lower case, no
accents or "¿", chat shorthand, a dropped letter, or just its key words). Grounded training
puts them in place of half of the training questions, so the model learns to copy its record
whatever the question looks like; measured: without them the embedded model echoed informal
questions back ("descuento estudiante?") instead of answering from the record it was given.

Negatives: out-of-domain questions and injection attempts from afinar's bundled lists, answered
with the recipe's refusal. They are kept to a modest share of the data (`data.negatives`, 10% by
default) so the model learns to refuse the outside without refusing everything. The bundled
lists are split into disjoint train and eval pools, so eval measures refusal on unseen questions.
"""

from __future__ import annotations

import random
import re
from functools import lru_cache
from importlib import resources

from afinar.data.schemas import Example

_ES_HINTS = re.compile(r"[áéíóúñ¿¡]|\b(qué|que|cómo|como|cuál|es|una|el|la|los|las|de|para|por|con|en|y)\b", re.I)
_EN_HINTS = re.compile(r"\b(what|how|which|why|the|is|are|a|an|of|to|for|with|in|and|do|does|can)\b", re.I)

_QUESTION_TEMPLATES = {
    "es": ["Oye, ¿{core}?", "Tengo una duda: ¿{core}?", "{core}", "Pregunta rápida: ¿{core}?",
           "¿Me ayudas con esto? ¿{core}?", "Necesito entenderlo bien: ¿{core}?", "{core}? gracias"],
    "en": ["Quick question: {core}?", "{core}", "Can you help me with this? {core}?",
           "I have a doubt: {core}?", "Please explain: {core}?", "{core}? thanks"],
}
_REQUEST_TEMPLATES = {
    "es": ["Por favor, {lower}", "{text} Gracias.", "Necesito esto: {lower}", "{lower}"],
    "en": ["Please, {lower}", "{text} Thanks.", "I need this: {lower}", "{lower}"],
}


_SHORTHAND = {"que": "q", "qué": "q", "por": "x", "para": "pa", "porque": "xq", "de": "d", "también": "tb"}
_FILLER = {"el", "la", "los", "las", "un", "una", "de", "del", "a", "en", "y", "o", "que", "qué", "mi", "me", "se", "es",
           "por", "para", "con", "lo", "al", "hay", "the", "a", "an", "of", "to", "is", "are", "do", "does", "i", "my"}


def typed_variant(question: str, rng: random.Random) -> str:
    """The question as a user might type it in a chat (see the module docstring)."""
    import unicodedata

    words = re.findall(r"[\w$%/:.,-]+", question.lower())
    words = [w.strip(".,") for w in words if w.strip(".,")]
    style = rng.choice(("plain", "shorthand", "keywords", "typo"))
    if style == "shorthand":
        words = [_SHORTHAND.get(w, w) if rng.random() < 0.8 else w for w in words]
    elif style == "keywords":
        kept = [w for w in words if w not in _FILLER and len(w) > 2]
        longest = set(sorted(kept, key=len, reverse=True)[: rng.randint(2, 4)])
        words = [w for w in kept if w in longest] if len(kept) >= 2 else words
    elif style == "typo":
        long = [i for i, w in enumerate(words) if len(w) > 4]
        if long:
            i = rng.choice(long)
            j = rng.randrange(1, len(words[i]) - 1)
            words[i] = words[i][:j] + words[i][j + 1:]
    text = " ".join(words)
    if rng.random() < 0.7:  # most users do not type accents
        text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return text + ("?" if rng.random() < 0.5 else "")


def language(text: str) -> str:
    """'es' or 'en', by counting function words and Spanish letters."""
    return "es" if len(_ES_HINTS.findall(text)) >= len(_EN_HINTS.findall(text)) else "en"


def paraphrase(question: str, rng: random.Random, n: int) -> list[str]:
    """Up to n distinct template rewrites of a question or request (never the original)."""
    text = question.strip()
    lang = language(text)
    core = text.strip("¿?¡! ").rstrip(".")
    lower = core[:1].lower() + core[1:] if core else core
    is_question = text.endswith("?")
    templates = list(_QUESTION_TEMPLATES[lang] if is_question else _REQUEST_TEMPLATES[lang])
    rng.shuffle(templates)
    out = []
    for template in templates:
        candidate = template.format(core=lower, lower=lower, text=text)
        if candidate != text and candidate not in out:
            out.append(candidate)
        if len(out) == n:
            break
    return out


def add_paraphrases(examples: list[Example], n: int, seed: int) -> list[Example]:
    """n paraphrased copies of every single-turn example (multi-turn ones are left as they are)."""
    rng = random.Random(seed)
    extra = []
    for ex in examples:
        turns = [m for m in ex.messages if m["role"] != "system"]
        if len(turns) != 2 or n == 0:
            continue
        for text in paraphrase(ex.first_user(), rng, n):
            messages = [dict(m, content=text) if m["role"] == "user" else dict(m) for m in ex.messages]
            extra.append(Example(messages, ex.path, ex.line, kind="paraphrase"))
    return extra


@lru_cache(maxsize=1)
def bundled_negatives() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(train pool, eval pool) of bundled out-of-domain questions and injection attempts."""
    folder = resources.files("afinar") / "resources" / "ood"
    lines = []
    for name in ("preguntas_fuera_de_dominio.txt", "inyecciones.txt"):
        lines += [ln.strip() for ln in (folder / name).read_text(encoding="utf-8").splitlines() if ln.strip()]
    train = tuple(q for i, q in enumerate(lines) if i % 5 != 0)
    held = tuple(q for i, q in enumerate(lines) if i % 5 == 0)
    return train, held


def negatives_needed(n_examples: int, share: float) -> int:
    """How many refusals make up `share` of the final data."""
    return 0 if share <= 0 else max(1, round(n_examples * share / (1 - share)))


def make_negatives(pool: tuple[str, ...], count: int, refusal: str, lang: str, seed: int) -> list[Example]:
    """`count` refusal examples, three quarters in the dataset's language when the pool allows."""
    rng = random.Random(seed)
    same = [q for q in pool if language(q) == lang]
    other = [q for q in pool if language(q) != lang]
    rng.shuffle(same)
    rng.shuffle(other)
    n_same = min(len(same), round(count * 0.75))
    chosen = same[:n_same] + other[: count - n_same]
    chosen += same[n_same : n_same + count - len(chosen)]
    return [Example([{"role": "user", "content": q}, {"role": "assistant", "content": refusal}], kind="negative")
            for q in chosen]
