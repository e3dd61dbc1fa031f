"""Guided interview: ask a recipe's questions in order and assemble the answers into one prompt.

The seeds' user-story generator asked for the feature, the user's role, specific
characteristics and extra requirements, then sent all of it as one request. A recipe declares
that as `interview: {questions: [...], template: "..."}`, where {1}, {2}, ... stand for the
answers; with no template each question is followed by its answer.
"""

from __future__ import annotations

import re

from afinar.errors import AfinarError

_SLOT = re.compile(r"\{(\d+)\}")


def assemble(questions: list[str], answers: list[str], template: str = "") -> str:
    """The prompt built from the interview's answers.

    Raises:
        AfinarError: fewer answers than questions, or a template slot with no question.
    """
    if len(answers) != len(questions):
        raise AfinarError(f"the interview has {len(questions)} questions but {len(answers)} answers")
    if not template:
        return "\n".join(f"{q}\n{a.strip()}" for q, a in zip(questions, answers))
    bad = [int(n) for n in _SLOT.findall(template) if not 1 <= int(n) <= len(answers)]
    if bad:
        raise AfinarError(f"interview.template uses {{{bad[0]}}} but there are only {len(answers)} questions")
    return _SLOT.sub(lambda m: answers[int(m.group(1)) - 1].strip(), template)
