"""What every CLI module shares: the group that turns AfinarError into one line, option parsers."""

from __future__ import annotations

import click

from afinar.errors import AfinarError


class _Group(click.Group):
    """A click group that turns AfinarError into `Error: ...` and exit status 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except AfinarError as exc:
            click.secho(f"Error: {exc}", fg="red", err=True)
            ctx.exit(exc.exit_code)


def _parse_map(pairs: tuple[str, ...]) -> dict[str, str]:
    mapping = {}
    for pair in pairs:
        role, sep, column = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"{pair!r}: expected role=column, e.g. question=Pregunta", param_hint="--map")
        mapping[role.strip()] = column.strip()
    return mapping


def _tokenizer(model: str, recipe=None):
    from afinar.models import load_tokenizer

    if recipe is not None:
        return load_tokenizer(model, recipe.trust_remote_code, recipe.chat_template)
    return load_tokenizer(model)
