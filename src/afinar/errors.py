"""The project's exceptions. Library code raises these; the CLI turns them into one clear line.

A user mistake (bad recipe, bad data, missing file) is an `AfinarError`; anything else that
escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class AfinarError(Exception):
    """A problem the user can fix; its message says what and how."""

    exit_code = 1


class RecipeError(AfinarError):
    """A recipe that does not validate. `problems` lists every problem found, one per line."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s) in the recipe:\n{lines}")


class DataError(AfinarError):
    """A dataset that cannot be used; the message names the file and line."""


class ModelError(AfinarError):
    """A base model that cannot be found, loaded or converted."""
