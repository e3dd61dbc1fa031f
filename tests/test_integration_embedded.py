"""Integration: the real embedded model (SmolLM2-135M) trains a few steps (LoRA and QLoRA), answers, is evaluated."""

import pytest

from afinar.demo import demo_recipe_path
from afinar.generation import generate_answer, load_run
from afinar.recipe import load_recipe
from afinar.training import train

pytestmark = pytest.mark.integration


def demo_recipe(tmp_path, *overrides):
    return load_recipe(demo_recipe_path(), [f"train.output_dir={tmp_path / 'runs'}", "train.batch_size=2",
                                            "data.eval_fraction=0.05", "data.paraphrases=0", *overrides])


def test_embedded_lora_trains_and_answers(tmp_path, embedded):
    result = train(demo_recipe(tmp_path, "train.max_steps=3"), progress=False)
    assert result.steps == 3 and result.best_eval_loss < result.base_eval_loss
    run = load_run(result.run_dir)
    answer = generate_answer(run.model, run.tokenizer, [{"role": "user", "content": "¿Qué es una pila?"}],
                             run.recipe.system_prompt, run.recipe.generation, max_new_tokens=12)
    assert answer and "<|im_end|>" not in answer
    del run

    from afinar.evaluation import evaluate

    report = evaluate(result.run_dir, max_new_tokens=24, limit=4, progress=False, log=lambda *a: None).report
    assert report["loss"]["tuned"]["eval_loss"] < report["loss"]["base"]["eval_loss"]
    assert report["probe"].endswith("tutor_sondeo.jsonl") and len(report["items"]) == 8
    assert all(item["replies"]["tuned/off"]["text"] for item in report["items"])  # bf16 batched generation answers


def test_embedded_ask_cli_refuses_out_of_domain_and_answers_in_domain(tmp_path, embedded):
    import json

    from click.testing import CliRunner

    from afinar.cli import main

    result = train(demo_recipe(tmp_path, "train.max_steps=1"), progress=False)
    out = CliRunner().invoke(main, ["ask", str(result.run_dir), "--json", "--max-new-tokens", "16"],
                             input="¿Quién ganó el mundial de fútbol de 2010?\n¿Qué es una pila y cuándo se usa?\n")
    assert out.exit_code == 0, out.output
    ood, inside = [json.loads(line) for line in out.output.splitlines()]
    assert ood["refused"] is True and ood["answer"].startswith("Lo siento")
    assert inside["refused"] is False and inside["answer"] and inside["mode"] == "refuse"


def test_embedded_qlora_nf4_trains_on_cpu(tmp_path, embedded):
    from safetensors.torch import load_file

    result = train(demo_recipe(tmp_path, "quantization=nf4", "train.max_steps=1"), progress=False)
    adapter = load_file(result.adapter_dir / "adapter_model.safetensors")
    assert result.steps == 1 and any("lora_B" in k and v.abs().sum() > 0 for k, v in adapter.items())


def test_embedded_exports_agree_with_the_adapter(tmp_path, embedded):
    """Merged, GGUF (f16, q8_0) and the Ollama Modelfile of a real run behave like base + adapter."""
    from afinar.export import export_run
    from afinar.export.ollama import parse_modelfile

    result = train(demo_recipe(tmp_path, "train.max_steps=2"), progress=False)
    quiet = lambda *a: None
    merged = export_run(result.run_dir, "merged", tmp_path / "merged", log=quiet)
    assert "same greedy next token everywhere: True" in merged.checks[0]
    f16 = export_run(result.run_dir, "gguf", tmp_path / "gguf", qtype="f16", log=quiet)
    assert "on 3/3 prompts" in f16.checks[1]  # the GGUF read back writes the same greedy text
    ollama = export_run(result.run_dir, "ollama", tmp_path / "ollama", qtype="q8_0", log=quiet)
    parsed = parse_modelfile(ollama.path.read_text())
    assert parsed["parameters"]["stop"][0] == "<|im_end|>" and "<|im_start|>assistant" in parsed["template"]
    assert (ollama.path.parent / parsed["from"].removeprefix("./")).stat().st_size > 100e6
