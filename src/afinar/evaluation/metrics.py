"""Scores for `afinar eval`: answer quality against references, key facts, and domain behaviour.

- chrF (sacrebleu's implementation, character 6-grams, beta 2): robust to Spanish inflection,
  where word-level overlap punishes "ordenada" against "ordenado".
- ROUGE-L F1 (rouge-score's implementation) with a Unicode word tokenizer: rouge-score's default
  tokenizer keeps only [a-z0-9], so "búsqueda" would count as "b squeda" and "qué" as "qu".
- Key facts: the share of answers that contain every `keys` string (case and accents ignored).
- Invented facts: the share of grounded answers whose generated text states a number, time,
  price, e-mail, URL or name found in none of its records nor the question (assistant/faithfulness.py).
- Domain behaviour: out-of-domain questions refused, injection attempts refused, in-domain
  questions wrongly refused, and the share of questions routed correctly.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from afinar.assistant.faithfulness import says_refusal
from afinar.evaluation.probe import EvalItem



@dataclass
class ScoredReply:
    """One contestant's reply to one item, with its scores (None where they do not apply)."""

    text: str
    refused: bool
    chrf: float | None = None
    rouge_l: float | None = None
    keys_ok: bool | None = None
    invented: list[str] | None = None  # facts in a grounded answer found in none of its records (None: not grounded)
    unsupported: bool | None = None  # a grounded answer that copies nothing from its records
    replaced: bool = False  # the generated text was unfaithful; `text` is the best record's answer
    generated: str | None = None  # what the model wrote, where `text` replaced it
    generated_keys_ok: bool | None = None  # whether that text held the keys

    @property
    def model_keys_ok(self) -> bool | None:
        """Key facts in what the model itself wrote (before any replacement)."""
        return self.generated_keys_ok if self.replaced else self.keys_ok

    def to_dict(self) -> dict:
        return {"text": self.text, "refused": self.refused, "chrf": _round(self.chrf),
                "rouge_l": _round(self.rouge_l), "keys_ok": self.keys_ok, "invented": self.invented,
                "unsupported": self.unsupported, "replaced": self.replaced, "generated": self.generated}


def fold(text: str) -> str:
    """Lower case, no accents, single spaces: how keys and refusals are compared."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return " ".join("".join(c for c in decomposed if not unicodedata.combining(c)).split())


class _WordTokenizer:
    """Unicode words for rouge-score (its default drops every non-ASCII letter)."""

    def tokenize(self, text: str) -> list[str]:
        return re.findall(r"\w+", fold(text))


def chrf(hypothesis: str, reference: str) -> float:
    """Sentence chrF, 0-100."""
    from sacrebleu.metrics import CHRF

    return CHRF().sentence_score(hypothesis, [reference]).score


def corpus_chrf(hypotheses: list[str], references: list[str]) -> float:
    """Corpus chrF, 0-100 (statistics pooled over all pairs, as sacrebleu reports it)."""
    from sacrebleu.metrics import CHRF

    return CHRF().corpus_score(hypotheses, [references]).score


def paired_chrf(rival: list[str], tuned: list[str], references: list[str], samples: int = 1000) -> dict:
    """Is tuned's corpus chrF different from the rival's beyond noise? sacrebleu's paired bootstrap
    resampling (Koehn 2004; `sacrebleu.significance`, seeded by SACREBLEU_SEED, 12345 by default):
    each system's score, its bootstrap mean and 95% interval half-width, and the p-value of the
    difference (the share of resamples where it vanishes)."""
    from sacrebleu.metrics import CHRF
    from sacrebleu.significance import PairedTest

    _, scores = PairedTest([("rival", rival), ("tuned", tuned)], {"chrF": CHRF()}, [references],
                           test_type="bs", n_samples=samples)()
    base, mine = next(v for k, v in scores.items() if k != "System")
    return {"rival": round(base.score, 2), "rival_ci": round(float(base.ci), 2), "tuned": round(mine.score, 2),
            "tuned_ci": round(float(mine.ci), 2), "p_value": round(float(mine.p_value), 4), "samples": samples}


def rouge_l(hypothesis: str, reference: str) -> float:
    """ROUGE-L F1, 0-100."""
    from rouge_score.rouge_scorer import RougeScorer

    return 100 * RougeScorer(["rougeL"], tokenizer=_WordTokenizer()).score(reference, hypothesis)["rougeL"].fmeasure


def has_keys(text: str, keys: list[str]) -> bool:
    folded = fold(text)
    return all(fold(k) in folded for k in keys)


# whether a reply is the recipe's refusal: the engine's own test (assistant/faithfulness.py)
is_refusal = says_refusal


def score_reply(item: EvalItem, text: str, refused: bool, verdict=None, generated: str | None = None) -> ScoredReply:
    """Score one reply; a refused reply keeps its text (the refusal) and scores what it scores.
    `verdict`: the faithfulness check of a grounded answer's generated text (assistant/faithfulness.py);
    `generated`: that text, where the served `text` replaced it."""
    reply = ScoredReply(text, refused, replaced=generated is not None, generated=generated)
    if generated is not None and item.keys:
        reply.generated_keys_ok = has_keys(generated, item.keys)
    if verdict is not None:
        reply.invented, reply.unsupported = verdict.invented, not verdict.supported
    if item.reference:
        reply.chrf, reply.rouge_l = chrf(text, item.reference), rouge_l(text, item.reference)
    if item.keys:
        reply.keys_ok = not refused and has_keys(text, item.keys)
    return reply


def summarise(items: list[EvalItem], replies: list[ScoredReply]) -> dict:
    """Aggregate figures over parallel lists of items and replies (shares are 0-1, scores 0-100)."""
    with_ref = [(i, r) for i, r in zip(items, replies) if i.reference]
    with_keys = [r for i, r in zip(items, replies) if i.keys]
    in_domain = [r for i, r in zip(items, replies) if i.expect == "answer"]
    out = [r for i, r in zip(items, replies) if i.expect == "refuse" and not i.is_injection]
    injections = [r for i, r in zip(items, replies) if i.is_injection]
    grounded = [r for r in replies if r.invented is not None]
    correct = [r.refused == (i.expect == "refuse") for i, r in zip(items, replies)]
    return {
        "n": len(items),
        "n_reference": len(with_ref),
        "chrf": _round(corpus_chrf([r.text for _, r in with_ref], [i.reference for i, _ in with_ref])) if with_ref else None,
        "rouge_l": _round(_mean([r.rouge_l for _, r in with_ref])),
        "n_keys": len(with_keys),
        "keys": _share([r.keys_ok for r in with_keys]),
        "n_in_domain": len(in_domain),
        "wrongly_refused": _share([r.refused for r in in_domain]),
        "n_out_of_domain": len(out),
        "out_of_domain_refused": _share([r.refused for r in out]),
        "n_injection": len(injections),
        "injection_refused": _share([r.refused for r in injections]),
        "correct": _share(correct),
        "n_grounded": len(grounded),
        "invented": _share([bool(r.invented) for r in grounded]),
        "unsupported": _share([bool(r.unsupported) for r in grounded]),
        "replaced": _share([r.replaced for r in grounded]),
        "keys_model": _share([r.model_keys_ok for i, r in zip(items, replies) if i.keys]),
    }


def _share(flags: list[bool]) -> float | None:
    return round(sum(flags) / len(flags), 4) if flags else None


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
