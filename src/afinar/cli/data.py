"""`afinar data check | prepare | generate`: the data stage's commands (parse, call, print)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from afinar.cli.common import _Group, _parse_map, _tokenizer


@click.group(cls=_Group)
def data():
    """Check, prepare and generate datasets."""


@data.command("check")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--recipe", "recipe_path", type=click.Path(path_type=Path), help="Take schema, columns, model and limits from this recipe.")
@click.option("--schema", type=click.Choice(["auto", "qa", "alpaca", "messages", "user_story"]), default=None, help="Record layout (default: detect).")
@click.option("--map", "mapping", multiple=True, metavar="ROLE=COLUMN", help="Map a role to a column, e.g. --map question=Pregunta.")
@click.option("--model", default=None, help="Base model whose tokenizer measures the examples (default: the recipe's, else embedded).")
@click.option("--max-seq-len", type=int, default=None, help="Examples longer than this many tokens are errors (default: the recipe's).")
@click.option("--no-tokens", is_flag=True, help="Skip token counting (no tokenizer is loaded).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def data_check(paths, recipe_path, schema, mapping, model, max_seq_len, no_tokens, as_json):
    """Validate dataset files and report every problem (exit 1 when there are errors)."""
    from afinar.data import check_data
    from afinar.data.generated import looks_generated
    from afinar.recipes import Recipe, load_recipe

    recipe = load_recipe(recipe_path) if recipe_path else None
    generated = [p for p in paths if looks_generated(p)]
    if generated:
        sys.exit(_check_generated(generated, recipe, as_json))
    schema = schema or (recipe.data.schema_ if recipe else "auto")
    columns = _parse_map(mapping) or (recipe.data.columns if recipe else {})
    model = model or (recipe.base_model if recipe else "embedded")
    tokenizer = None if no_tokens else _tokenizer(model, recipe)
    defaults = recipe or Recipe()  # the recipe defaults apply when no recipe is given
    report = check_data(
        list(paths), schema=schema, columns=columns, tokenizer=tokenizer, tokenizer_name=None if no_tokens else model,
        system_prompt=recipe.system_prompt if recipe else None,
        max_seq_len=max_seq_len or defaults.train.max_seq_len, min_examples=defaults.data.min_examples,
    )
    listed = [Path(f) for f in recipe.data.generated] if recipe else []  # the recipe's teacher-written files: checked too
    if as_json:
        out = report.to_dict()
        if listed:
            out["generated"] = _generated_dict(*_generated_findings(listed, recipe))
        click.echo(json.dumps(out, ensure_ascii=False, indent=2))
        sys.exit(0 if report.ok and out.get("generated", {}).get("ok", True) else 1)
    for issue in report.issues:
        click.secho(str(issue), fg="red" if issue.severity == "error" else "yellow")
    for line in report.summary_lines():
        click.echo(line)
    click.secho("OK: the data is usable" if report.ok else "FAILED: fix the errors above", fg="green" if report.ok else "red", bold=True)
    if listed:
        click.echo(f"\nthe recipe's data.generated: {', '.join(p.name for p in listed)}")
        generated_ok = _check_generated(listed, recipe, as_json) == 0
        sys.exit(0 if report.ok and generated_ok else 1)
    sys.exit(0 if report.ok else 1)


def _generated_findings(paths: list[Path], recipe) -> tuple[list, list]:
    """(usable items, issues) of files written by `afinar data generate`, against the recipe's records when given."""
    from afinar.data import check_data
    from afinar.data.generated import check_generated, read_generated

    if recipe is not None:
        d = recipe.data
        examples = check_data(d.files, schema=d.schema_, columns=d.columns, min_examples=1).examples
        return check_generated(paths, examples)
    items, issues = [], []  # the format only: which records they name is checked with --recipe
    for path in paths:
        found, problems = read_generated(path)
        items, issues = items + found, issues + problems
    return items, issues


def _generated_dict(items: list, issues: list) -> dict:
    return {"ok": not any(i.severity == "error" for i in issues), "usable": len(items), "issues": [i.to_dict() for i in issues]}


def _check_generated(paths: list[Path], recipe, as_json: bool) -> int:
    """`data check` of files written by `afinar data generate`: printed, and 1 when there are errors."""
    from afinar.data.generated import summary

    items, issues = _generated_findings(paths, recipe)
    errors = [i for i in issues if i.severity == "error"]
    if as_json:
        click.echo(json.dumps(_generated_dict(items, issues), ensure_ascii=False, indent=2))
        return 1 if errors else 0
    for issue in issues:
        click.secho(str(issue), fg="red" if issue.severity == "error" else "yellow")
    click.echo(f"generated data: {summary(items)} usable; {len(errors)} errors, {len(issues) - len(errors)} warnings"
               + ("" if recipe else " (add --recipe to check the records they name)"))
    click.secho("OK: the data is usable" if not errors else "FAILED: fix the errors above",
                fg="red" if errors else "green", bold=True)
    return 1 if errors else 0


@data.command("generate")
@click.argument("recipe_path", type=click.Path(path_type=Path))
@click.option("--teacher", default=None, help="OpenAI-compatible endpoint (e.g. http://127.0.0.1:11434/v1) or a .gguf file (default: the recipe's teacher.url).")
@click.option("--model", default=None, help="The teacher's model name (default: the recipe's teacher.model).")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Output JSONL (default: the recipe's teacher.output).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe field, e.g. --set teacher.paraphrases=8.")
@click.option("--preview", is_flag=True, help="Ask for the first records only, print them, write nothing.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def data_generate(recipe_path, teacher, model, out, overrides, preview, no_progress):
    """Ask a teacher model for paraphrases, near misses and out-of-domain questions (a reviewable JSONL)."""
    from afinar.data.generate import generate_data
    from afinar.data.teacher import load_teacher
    from afinar.recipes import load_recipe

    extra = [f"teacher.url={teacher}"] if teacher else []
    recipe = load_recipe(recipe_path, list(overrides) + extra + ([f"teacher.model={model}"] if model else []))
    t = recipe.teacher
    teacher_obj = load_teacher(t.url, t.model, t.api_key_env, t.timeout_s, t.temperature, t.max_tokens)
    try:
        result = generate_data(recipe, teacher_obj, out, preview_only=preview, progress=not no_progress, log=click.echo)
    except KeyboardInterrupt:
        click.secho("Interrupted: nothing was written; the answered requests are cached, run the same command "
                    "again to resume", fg="red", err=True)
        sys.exit(130)
    click.echo(result.summary())
    if result.output:
        click.echo(f"Wrote {result.output} and {result.review} (read it: flagged lines stay out of use until you "
                   f"delete their 'flag'). Use it: add it to data.generated in {recipe_path}, then `afinar data check "
                   f"{result.output} --recipe {recipe_path}`")


@data.command("prepare")
@click.argument("recipe_path", type=click.Path(path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe field, e.g. --set data.eval_fraction=0.2.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Output folder (default: <output_dir>/<name>/data).")
@click.option("--skip-invalid", is_flag=True, help="Leave out records with errors (counted and reported) instead of stopping.")
def data_prepare(recipe_path, overrides, out, skip_invalid):
    """Check, split and augment a recipe's data into train/eval JSONL."""
    from afinar.data import prepare_data
    from afinar.recipes import load_recipe

    recipe = load_recipe(recipe_path, list(overrides) + (["data.skip_invalid=true"] if skip_invalid else []))
    out = out or Path(recipe.train.output_dir) / recipe.name / "data"
    prepared = prepare_data(recipe, out, tokenizer=_tokenizer(recipe.base_model, recipe), tokenizer_name=recipe.base_model)
    for issue in prepared.report.issues:
        click.secho(str(issue), fg="yellow" if issue.severity == "warning" else "red")
    click.echo(prepared.summary())
    click.echo(f"Wrote {prepared.train_path}, {prepared.eval_path} and {prepared.report_path}")
