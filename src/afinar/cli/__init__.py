"""The `afinar` command line: each command parses its options, calls one stage function, prints.

Domain errors (`AfinarError`) become one clear line on stderr and exit status 1, in one place
(`_Group.invoke`). Heavy libraries are imported inside the commands, so `afinar --help` is instant.
`data.py` holds the data stage's commands (check, prepare, generate), `common.py` what they share,
`chat.py` is the terminal chat loop, `demo.py` the `afinar demo` pipeline; `python -m afinar.cli`
runs this group (`__main__.py`), which is what `accelerate launch -m afinar.cli train` needs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from afinar import __version__
from afinar.cli.common import _Group


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="afinar")
def main():
    """afinar: turn a small domain dataset into a trustworthy domain assistant."""


@main.command("init")
@click.argument("data_path", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None, help="Recipe file to write (default: <data>.recipe.yaml).")
@click.option("--name", default=None, help="Assistant name (default: from the file name).")
@click.option("--force", is_flag=True, help="Overwrite an existing recipe.")
def init(data_path, output, name, force):
    """Write a starter recipe for a dataset."""
    from afinar.recipes.starter import write_starter_recipe

    path = write_starter_recipe(data_path, output, name, force)
    click.echo(f"Wrote {path}. Next: afinar data check {data_path} && afinar data prepare {path}")


@main.command("train")
@click.argument("recipe_path", type=click.Path(path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe field, e.g. --set train.epochs=1.")
@click.option("--resume", is_flag=True, help="Continue from the newest complete checkpoint of this run.")
@click.option("--no-progress", is_flag=True, help="No progress bar (log lines only).")
def train_cmd(recipe_path, overrides, resume, no_progress):
    """Fine-tune the recipe's base model with LoRA/QLoRA into runs/<name>/."""
    from afinar.recipes import load_recipe
    from afinar.training import train

    result = train(load_recipe(recipe_path, list(overrides)), resume=resume, progress=not no_progress)
    _print_train_result(result)


def _print_train_result(result) -> None:
    if not result.main_process:
        return
    tok_s = result.tokens / max(result.seconds, 1e-9)
    click.echo(f"trained {result.steps} steps, {result.tokens} tokens in {result.seconds:.0f} s ({tok_s:.0f} tokens/s)")
    if result.best_eval_loss is not None:
        base = f" (base model: {result.base_eval_loss:.4f})" if result.base_eval_loss is not None else ""
        click.echo(f"best eval loss {result.best_eval_loss:.4f} at step {result.best_step}{base}")
    click.echo(f"adapter: {result.adapter_dir}\nloss curve: {result.run_dir / 'loss.png'}")


_ENGINE_HELP = ("'auto': llama.cpp where llama-cpp-python is installed (`make demo` builds it), else torch; "
                "'torch': transformers with the adapters on one base; 'llamacpp': llama.cpp over each run's GGUF "
                "(2-3x faster one reply at a time on a CPU; needs llama-cpp-python).")

@main.command("chat")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--interview", is_flag=True, help="Run the recipe's guided interview, then answer it.")
@click.option("--mode", type=click.Choice(["off", "refuse", "strict"]), default=None, help="Guard mode (default: the recipe's).")
@click.option("--engine", "backend", type=click.Choice(["auto", "torch", "llamacpp"]), default="auto", show_default=True, help=_ENGINE_HELP)
def chat_cmd(runs, interview, mode, backend):
    """Chat in the terminal with one or more trained runs (one base, several adapters)."""
    from afinar.cli.chat import run_chat, run_interview
    from afinar.assistant.engine import Engine

    engine = Engine(list(runs), mode, backend=backend, log=lambda text: click.secho(text, fg="yellow", err=True))
    write = lambda text: click.echo(text, nl=False)
    note = lambda text: click.secho(text, fg="yellow", err=True)
    read = lambda: input("> ")
    if interview:
        run_interview(engine, read, write, note)
    else:
        run_chat(engine, read, write, note)


@main.command("ask")
@click.argument("run", type=click.Path(path_type=Path))
@click.argument("question", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per answer.")
@click.option("--mode", type=click.Choice(["off", "refuse", "strict"]), default=None, help="Guard mode (default: the recipe's).")
@click.option("--max-new-tokens", type=int, default=None, help="Longest answer (default: the recipe's).")
@click.option("--engine", "backend", type=click.Choice(["auto", "torch", "llamacpp"]), default="auto", show_default=True, help=_ENGINE_HELP)
def ask_cmd(run, question, as_json, mode, max_new_tokens, backend):
    """Answer one question (or one per line of stdin when none is given)."""
    from afinar.assistant.engine import Engine

    engine = Engine([run], mode, backend=backend, log=lambda text: click.echo(text, err=True))
    questions = [question] if question else [line.strip() for line in sys.stdin if line.strip()]
    for q in questions:
        reply = engine.reply([{"role": "user", "content": q}], max_new_tokens=max_new_tokens)
        if as_json:
            click.echo(json.dumps(reply.to_dict(), ensure_ascii=False))
        else:
            from afinar.cli.chat import marker

            click.echo(reply.answer + (f"\n{marker(reply)}" if marker(reply) else ""))


@main.command("index")
@click.argument("run", type=click.Path(path_type=Path))
def index_cmd(run):
    """Rebuild a run's index from its data files as they are now: new and changed records are answered without retraining."""
    from afinar.index.store import rebuild_run_index

    change = rebuild_run_index(run)
    click.echo(f"index: {change.records} records ({len(change.added)} new, {len(change.removed)} gone) in {change.folder}")
    for q in change.added[:10]:
        click.echo(f"  + {q}")
    for q in change.removed[:10]:
        click.echo(f"  - {q}")


@main.command("eval")
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--probe", type=click.Path(path_type=Path), default=None, help="Probe JSONL (question, expect, reference, keys, kind); default: the recipe's eval.probe.")
@click.option("--against", default="base", show_default=True, help="Compare with 'base' (the model without adapter), another run folder on the same base, or 'none'.")
@click.option("--endpoint", default=None, metavar="URL", help="Also score an OpenAI-compatible API, e.g. http://127.0.0.1:8000/v1 (key from OPENAI_API_KEY).")
@click.option("--model", "endpoint_model", default=None, metavar="NAME", help="The model id to ask the --endpoint for.")
@click.option("--max-new-tokens", type=int, default=None, help="Longest generated answer (default: the recipe's eval.max_new_tokens).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Ask at most this many held-out and probe questions each (a quick look).")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Report folder (default: RUN/eval).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def eval_cmd(run, probe, against, endpoint, endpoint_model, max_new_tokens, limit, out, no_progress):
    """Compare a tuned run with its base: loss, answer quality, domain behaviour; writes a report."""
    from afinar.evaluation import evaluate
    from afinar.evaluation.summary import summary_lines

    result = evaluate(run, probe, against, endpoint, endpoint_model, max_new_tokens, limit, out, progress=not no_progress)
    for line in summary_lines(result.report):
        click.echo(line)
    click.echo(f"report: {result.html_path}\nfigures: {result.json_path}")


@main.command("serve")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind; 0.0.0.0 exposes the server to your network.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True, help="Port to listen on.")
@click.option("--api-key", default=None, help="Require this key (default: AFINAR_API_KEY from the environment; none: no key).")
@click.option("--mode", type=click.Choice(["off", "refuse", "strict"]), default=None, help="Guard mode for every run (default: each recipe's).")
@click.option("--max-queue", type=click.IntRange(min=1), default=16, show_default=True, help="Requests that may wait for the model; the next gets 429.")
@click.option("--max-batch", type=click.IntRange(min=1), default=16, show_default=True, help="Replies generated together when clients ask at once (1: one at a time).")
@click.option("--studio/--no-studio", default=True, show_default=True, help="Offer the studio (upload, check, train, evaluate) on the web page.")
@click.option("--workdir", type=click.Path(path_type=Path), default=Path("studio"), show_default=True, help="Where the studio keeps uploads, recipes and runs.")
@click.option("--engine", "backend", type=click.Choice(["torch", "llamacpp", "auto", "vllm"]), default="torch", show_default=True,
              help="'torch': one base, every adapter, concurrent replies batched; 'llamacpp': llama.cpp over each run's GGUF, one reply at a time; 'auto': llama.cpp where installed; 'vllm': print (or start, when vllm is installed) the vllm serve command for GPUs.")
def serve_cmd(runs, host, port, api_key, mode, max_queue, max_batch, studio, workdir, backend):
    """Serve runs over an OpenAI-compatible API, with a web chat and studio at /."""
    import os

    api_key = api_key or os.environ.get("AFINAR_API_KEY") or None
    if backend == "vllm":
        _serve_vllm(list(runs), host, port, api_key is not None)
        return
    import uvicorn

    from afinar.assistant.engine import Engine
    from afinar.serving.api import ServeLimits, create_app
    from afinar.serving.studio import Studio

    engine = Engine(list(runs), mode, max_batch, backend=backend)
    base = engine.persona(engine.names[0]).recipe.base_model
    app = create_app(engine, api_key, ServeLimits(max_queue=max_queue), Studio(workdir, base) if studio else None)
    click.echo(f"afinar serve: {', '.join(engine.names)} on http://{host}:{port}/ (API: /v1/chat/completions)"
               + ("; API key required" if api_key else ""))
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.secho(f"warning: listening on {host}: other machines can reach this server" + ("" if api_key else " without a key"), fg="yellow", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")


def _serve_vllm(runs: list[Path], host: str, port: int, with_key: bool) -> None:
    import shutil
    import subprocess

    from afinar.serving.vllm import printable, vllm_command

    argv = vllm_command(runs, host, port, with_key)
    click.echo(printable(argv))
    if shutil.which("vllm") is None:
        click.echo("(vllm is not installed here: run the command above on a GPU machine with `pip install vllm`)")
        return
    import os

    argv = [os.environ.get("AFINAR_API_KEY", "") if a == "$AFINAR_API_KEY" else a for a in argv]
    sys.exit(subprocess.call(argv))


@main.command("export")
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--to", "to", type=click.Choice(["merged", "gguf", "ollama", "hub"]), required=True, help="What to write.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Output folder (default: RUN/export/<to>).")
@click.option("--type", "qtype", type=click.Choice(["f16", "bf16", "q8_0", "q5_0", "q4_0"]), default="q8_0", show_default=True, help="GGUF weight type (gguf, ollama); below q8_0 small models lose much.")
@click.option("--repo", default=None, metavar="USER/NAME", help="Hub repository (hub).")
@click.option("--merged", "merged_weights", is_flag=True, help="Push the merged model instead of the adapter (hub).")
@click.option("--dry-run", is_flag=True, help="Write the folder that would be pushed, push nothing (hub).")
@click.option("--force", is_flag=True, help="Export a run that stopped before its last step.")
def export_cmd(run, to, out, qtype, repo, merged_weights, dry_run, force):
    """Export a run: merged safetensors, GGUF, an Ollama Modelfile, or the Hugging Face Hub."""
    from afinar.export import export_run

    result = export_run(run, to, out, qtype, repo, dry_run, merged_weights, log=lambda text: click.echo(text), force=force)
    for line in result.checks:
        click.echo(f"verified: {line}" if not line.startswith(("dry run", "pushed")) else line)
    click.echo(f"{to}: {result.path}")


@main.command("doctor")
@click.argument("recipe_path", required=False, type=click.Path(path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe field.")
def doctor_cmd(recipe_path, overrides):
    """Report this machine's training setup and, for a recipe, estimated memory and time."""
    from afinar.training.doctor import doctor_lines

    for line in doctor_lines(recipe_path, list(overrides)):
        click.echo(line)


@main.group(cls=_Group)
def recipe():
    """Inspect recipes."""


@recipe.command("show")
@click.argument("recipe_path", type=click.Path(path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe field.")
def recipe_show(recipe_path, overrides):
    """Print the resolved recipe (defaults < file < --set)."""
    from afinar.recipes import load_recipe

    click.echo(load_recipe(recipe_path, list(overrides)).to_yaml(), nl=False)


@recipe.command("fields")
def recipe_fields():
    """List every recipe field with its default and meaning."""
    from afinar.recipes import field_docs

    for key, default, doc in field_docs():
        click.echo(f"{key:32} {default:14} {doc}")


@main.group("recipes", cls=_Group)
def recipes_group():
    """The bundled recipes, one per seed system (recipes/)."""


@recipes_group.command("list")
def recipes_list():
    """List the bundled recipes."""
    from afinar.recipes.catalog import list_recipes

    for r in list_recipes():
        click.echo(f"{r.name:18} {r.base_model:38} {r.schema:10} guard {r.guard:7} {', '.join(r.data)}")
        click.echo(f"{'':18} {r.seed}  ({r.path})")


@recipes_group.command("check")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
def recipes_check(paths):
    """Validate recipes for their own (GPU) base models without downloading them."""
    from afinar.recipes.catalog import check_gpu_settings, list_recipes

    for path in paths or [r.path for r in list_recipes()]:
        for line in check_gpu_settings(Path(path)):
            click.echo(line)


@main.command("demo")
@click.option("--workdir", type=click.Path(path_type=Path), default=Path("runs/demo"), help="Where the demo writes its files.")
def demo(workdir):
    """Run the whole pipeline on the bundled Spanish tutor dataset and the embedded model."""
    from afinar.cli.demo import run_demo

    run_demo(workdir)


from afinar.cli.data import data  # noqa: E402 (the data stage's commands live in their own module)

main.add_command(data)
