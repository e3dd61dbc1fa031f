"""Export a trained run: `export_run(run_dir, to=merged|gguf|ollama|hub, ...)`.

    merged  RUN/export/merged/            safetensors model + tokenizer + chat template, logit-checked
    gguf    RUN/export/gguf/<name>-<type>.gguf  (f16 or q8_0), read back and compared
    ollama  RUN/export/ollama/            the GGUF and a Modelfile whose TEMPLATE is the trained one
    hub     RUN/export/hub/               adapter (or merged model) + model card, pushed unless --dry-run
Every step writes to a temporary name and renames into place, and says what it verified.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from afinar.errors import AfinarError

TARGETS = ("merged", "gguf", "ollama", "hub")
# Teacher-forced next-token agreement of the GGUF read back with the merged model, at least.
# Measured on runs of the embedded 135M model: f16 98.8-100% (near-tied logits flip when rounded
# to 16 bits), q8_0 99.3%, q5_0 80.8%, q4_0 68.2% (small models lose much at 4-5 bits; a broken
# file agrees on almost nothing).
MIN_AGREEMENT = {"f16": 0.97, "bf16": 0.9, "q8_0": 0.9, "q5_0": 0.7, "q4_0": 0.55}


def gguf_name(run_name: str, qtype: str) -> str:
    """The file name `--to gguf` gives a run's GGUF of this type (in RUN/export/gguf/ by default)."""
    return f"{run_name}-{qtype}.gguf"


@dataclass
class ExportResult:
    to: str
    path: Path
    checks: list[str] = field(default_factory=list)
    url: str | None = None


def export_run(run_dir: str | Path, to: str, out: str | Path | None = None, qtype: str = "q8_0", repo: str | None = None,
               dry_run: bool = False, merged_weights: bool = False, log=print, force: bool = False) -> ExportResult:
    """Export a run (see the module docstring); raises AfinarError with the fix on bad input.
    A run that stopped before its last step is refused unless `force` (then it is said)."""
    from afinar.models import run_incomplete

    if to not in TARGETS:
        raise AfinarError(f"--to {to!r}: choose one of {', '.join(TARGETS)}")
    run_dir = Path(run_dir)
    stopped = run_incomplete(run_dir)
    if stopped and not force:
        raise AfinarError(f"{run_dir}: {stopped}. Export it as it is with --force")
    if stopped:
        log(f"warning: {run_dir}: {stopped}; exporting it as it is (--force)")
    out = Path(out) if out else run_dir / "export" / to
    if to == "merged":
        path, check = _merged(run_dir, out, log)
        return ExportResult(to, path, [check.describe()])
    if to in ("gguf", "ollama"):
        return _gguf(run_dir, out, qtype, to == "ollama", log)
    return _hub(run_dir, out, repo, dry_run, merged_weights, log)


def _merged(run_dir: Path, out: Path, log):
    from afinar.export.merged import export_merged

    return export_merged(run_dir, out, log)


def _gguf(run_dir: Path, out: Path, qtype: str, ollama: bool, log) -> ExportResult:
    import tempfile

    from afinar.export.gguf_file import load_merged, verify_gguf, verify_with_llama_cpp, write_gguf
    from afinar.export.merged import CHECK_PROMPTS
    from afinar.models import read_run

    recipe, tokenizer, _ = read_run(run_dir)
    name = gguf_name(recipe.name, qtype)
    if ollama:  # written first: an unreadable chat template fails before the slow steps
        from afinar.export.ollama import modelfile

        modelfile_text = modelfile(name, tokenizer, recipe)
    with tempfile.TemporaryDirectory(prefix="afinar-merged-") as tmp:
        merged, merge_check = _merged(run_dir, Path(tmp) / "merged", log)
        log(f"writing {name} ...")
        gguf_file = write_gguf(merged, Path(tmp) / name, qtype, recipe.name)
        merged_model, merged_tokenizer = load_merged(merged)
        check = verify_gguf(gguf_file, merged_model, merged_tokenizer, CHECK_PROMPTS, recipe.system_prompt)
        if check.next_token_agreement < MIN_AGREEMENT[qtype]:
            raise AfinarError(f"the {qtype} GGUF does not behave like the merged model: {check.describe()} "
                              f"(at least {MIN_AGREEMENT[qtype]:.0%} expected); nothing was written")
        checks = [merge_check.describe(), check.describe()]
        llama_cpp = verify_with_llama_cpp(gguf_file, merged_model, merged_tokenizer, CHECK_PROMPTS, recipe.system_prompt)
        checks += [llama_cpp] if llama_cpp else []
        from afinar.io import atomic_dir

        with atomic_dir(out) as folder:
            gguf_file.replace(folder / name)
            if not ollama:  # GGUFs of other types exported before stay beside this one
                for other in out.glob("*.gguf"):
                    if other.name != name:
                        _link_or_copy(other, folder / other.name)
            record = {"kind": "ollama" if ollama else "gguf", "type": qtype, "run": str(run_dir),
                      "merge_check": merge_check.describe(), "gguf_check": check.describe(), "llama_cpp_check": llama_cpp}
            if ollama:
                (folder / "Modelfile").write_text(modelfile_text, encoding="utf-8")
            (folder / "export.json").write_text(json.dumps(record, indent=2) + "\n")
    return ExportResult("ollama" if ollama else "gguf", out / ("Modelfile" if ollama else name), checks)


def _link_or_copy(source: Path, target: Path) -> None:
    import os
    import shutil

    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _hub(run_dir: Path, out: Path, repo: str | None, dry_run: bool, merged_weights: bool, log) -> ExportResult:
    import tempfile

    from afinar.export.hub import build_hub_folder, push

    if not repo and not dry_run:
        raise AfinarError("--to hub needs --repo USER/NAME (or --dry-run to only write the folder)")
    repo = repo or f"your-user/{run_dir.name}"
    with tempfile.TemporaryDirectory(prefix="afinar-hub-") as tmp:
        merged = _merged(run_dir, Path(tmp) / "merged", log)[0] if merged_weights else None
        folder = build_hub_folder(run_dir, out, repo, merged)
    if dry_run:
        return ExportResult("hub", folder, [f"dry run: the folder that would be pushed to {repo} is {folder}"])
    url = push(folder, repo)
    return ExportResult("hub", folder, [f"pushed to {url}"], url)
