"""`afinar export RUN --to hub --repo USER/NAME`: push the adapter (or the merged model) with a model card.

The folder that would be pushed is built first (`--dry-run` stops there): the adapter or merged
weights (safetensors), the tokenizer with its chat template, the resolved recipe, and a README.md
model card with metadata (base model, library, language, tags), a dataset summary, the run's
eval figures as produced by the run (summary.json, eval/eval.json), and how to use it with
transformers, peft, vLLM and Ollama. The token comes only from HF_TOKEN; the card, the recipe
and every file pushed are checked not to contain it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import yaml

from afinar.errors import AfinarError


def build_hub_folder(run_dir: Path, out: Path, repo: str, merged_dir: Path | None = None) -> Path:
    """Write the folder to push: weights, tokenizer, recipe, model card."""
    from afinar.models import read_run
    from afinar.io import atomic_dir

    recipe, _, adapter = read_run(run_dir)
    with atomic_dir(out) as tmp:
        shutil.copytree(merged_dir or adapter, tmp, dirs_exist_ok=True)
        public = _public_recipe(recipe)
        (tmp / "afinar_recipe.yaml").write_text(yaml.safe_dump(public, allow_unicode=True, sort_keys=False), encoding="utf-8")
        (tmp / "README.md").write_text(model_card(run_dir, recipe, repo, merged=merged_dir is not None), encoding="utf-8")
        _check_no_secret(tmp)
    return out


def _public_recipe(recipe) -> dict:
    """The resolved recipe without this machine's paths (data files, probe, output folder, local base)."""
    public = recipe.to_dict()
    public["data"]["files"] = [Path(f).name for f in public["data"]["files"]]
    public["data"]["generated"] = [Path(f).name for f in public["data"].get("generated", [])]
    public["teacher"]["output"] = Path(public["teacher"]["output"]).name
    if public["teacher"]["url"] and not public["teacher"]["url"].startswith(("http://", "https://")):
        public["teacher"]["url"] = Path(public["teacher"]["url"]).name  # a local .gguf teacher
    if public["eval"].get("probe"):
        public["eval"]["probe"] = Path(public["eval"]["probe"]).name
    public["train"]["output_dir"] = "runs"
    public["base_model"] = _hub_id(recipe.base_model)
    return public


def push(folder: Path, repo: str, private: bool = True) -> str:
    """Upload the folder to the Hub; returns the repo URL."""
    token = os.environ.get("HF_TOKEN")
    if not token:
        raise AfinarError("pushing to the Hub needs a token in the HF_TOKEN environment variable "
                          "(create one at https://huggingface.co/settings/tokens); or use --dry-run")
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        api.create_repo(repo, private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo, commit_message="Upload with afinar export")
    except Exception as exc:  # network, auth, permissions: one clear line, never the token
        raise AfinarError(f"pushing to {repo} failed: {type(exc).__name__}: {str(exc).replace(token, '***')}") from None
    return f"https://huggingface.co/{repo}"


def model_card(run_dir: Path, recipe, repo: str, merged: bool) -> str:
    summary = _read_json(run_dir / "summary.json")
    evaluation = _read_json(run_dir / "eval" / "eval.json")
    counts = (_read_json(run_dir / "data" / "prepare_report.json") or {}).get("counts", {})
    meta = {"base_model": _hub_id(recipe.base_model), "library_name": "transformers" if merged else "peft",
            "language": ["es"], "license": "apache-2.0", "pipeline_tag": "text-generation",
            "tags": ["afinar", "lora", "qlora" if recipe.quantization == "nf4" else "lora-fp", "domain-assistant"]}
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", "", f"# {recipe.name}", "",
             f"A domain assistant fine-tuned with afinar from `{meta['base_model']}` "
             f"({'merged weights' if merged else 'LoRA adapter'}, r={recipe.lora.r}, alpha={recipe.lora.alpha}).", "",
             "## Data", "", _data_line(recipe, counts), "", "## Evaluation (from the training run)", ""]
    lines += _eval_lines(summary, evaluation)
    lines += ["", "## Domain behaviour", "", f"Guard mode when served with afinar: `{recipe.guard_mode}`. "
              + (f"Out-of-domain questions get: \"{recipe.refusal}\"" if recipe.refusal else "No refusal message."), ""]
    if recipe.grounded:
        lines += ["Trained to answer from its dataset's records, given in the system prompt after the system prompt "
                  "(`[1] question\\nanswer`, best match first; see afinar's `chat_template.with_context`). This export has "
                  "no retriever: used as below, without records, it answers from what it learned alone, which is "
                  "much less often right about facts. Serve it with afinar (`afinar serve RUN`) to keep the records, "
                  "or put the matching records in the system prompt yourself, laid out the same way.", ""]
    lines += _usage(repo, recipe, merged)
    return "\n".join(lines) + "\n"


def _data_line(recipe, counts: dict) -> str:
    files = ", ".join(Path(f).name for f in recipe.data.files)
    if not counts:
        return f"Files: {files}."
    return (f"Files: {files}. {counts.get('train', 0)} training examples ({counts.get('train_original', 0)} original, "
            f"{counts.get('train_paraphrase', 0)} paraphrases, {counts.get('train_negative', 0)} refusals) and "
            f"{counts.get('eval', 0)} held out for evaluation; {counts.get('duplicates_removed', 0)} duplicates removed.")


def _eval_lines(summary: dict | None, evaluation: dict | None) -> list[str]:
    if not summary and not evaluation:
        return ["Not evaluated yet (`afinar eval RUN`)."]
    lines = ["| figure | base | tuned |", "|---|---:|---:|"]
    if summary and summary.get("base_eval_loss") is not None:
        lines.append(f"| eval loss (held-out answers) | {summary['base_eval_loss']:.3f} | {summary['best_eval_loss']:.3f} |")
    held = ((evaluation or {}).get("summary") or {}).get("held_out", {})
    for metric, label in (("chrf", "chrF"), ("rouge_l", "ROUGE-L")):
        base, tuned = (held.get("base/off") or {}).get(metric), (held.get("tuned/off") or {}).get(metric)
        if base is not None and tuned is not None:
            lines.append(f"| {label} (held-out answers) | {base:.1f} | {tuned:.1f} |")
    return lines


def _usage(repo: str, recipe, merged: bool) -> list[str]:
    system = recipe.system_prompt.replace('"', '\\"')
    load = (f'model = AutoModelForCausalLM.from_pretrained("{repo}")\ntokenizer = AutoTokenizer.from_pretrained("{repo}")' if merged else
            f'from peft import PeftModel\n\nbase = AutoModelForCausalLM.from_pretrained("{_hub_id(recipe.base_model)}")\n'
            f'model = PeftModel.from_pretrained(base, "{repo}")\ntokenizer = AutoTokenizer.from_pretrained("{repo}")')
    vllm = (f"vllm serve {repo}" if merged else
            f"vllm serve {_hub_id(recipe.base_model)} --enable-lora --lora-modules {recipe.name}={repo}")
    return ["## Use", "", "With transformers" + ("" if merged else " and peft") + ":", "", "```python",
            "from transformers import AutoModelForCausalLM, AutoTokenizer", "", load, "",
            f'messages = [{{"role": "system", "content": "{system}"}}, {{"role": "user", "content": "..."}}]',
            "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\")",
            "print(tokenizer.decode(model.generate(inputs, max_new_tokens=256)[0, inputs.shape[1]:], skip_special_tokens=True))",
            "```", "", "With vLLM (OpenAI-compatible server):", "", "```bash", vllm, "```", "",
            "With Ollama: `afinar export RUN --to ollama` writes a GGUF and a Modelfile; then", "", "```bash",
            f"ollama create {recipe.name} -f Modelfile && ollama run {recipe.name}", "```", "",
            "With afinar (domain guard included): `afinar serve RUN`.", ""]


def _hub_id(base_model: str) -> str:
    """The base model as others can fetch it: the embedded model's hub id; a local folder's name."""
    if base_model == "embedded":
        return "HuggingFaceTB/SmolLM2-135M-Instruct"
    return Path(base_model).name if Path(base_model).expanduser().exists() else base_model


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def _check_no_secret(folder: Path) -> None:
    token = os.environ.get("HF_TOKEN")
    if not token:
        return
    for path in folder.rglob("*"):
        if path.is_file() and path.suffix in (".md", ".yaml", ".json", ".jinja", ".txt") and token in path.read_text(errors="ignore"):
            raise AfinarError(f"{path.name} contains the HF_TOKEN value; nothing will be pushed")
