"""The bundled recipes (recipes/): each one's GPU settings checked against its base model's real
architecture (no download), its dataset checked, and each one run end to end on a tiny model."""

import pytest
from click.testing import CliRunner
from conftest import save_tiny_model

from afinar.cli import main
from afinar.recipes import load_recipe
from afinar.recipes.catalog import check_gpu_settings, list_recipes, recipes_dir

RECIPES = sorted(recipes_dir().glob("*.yaml"))
SEEDS = {"historias-usuario": "Mistral-7B", "banco-faq": "Llama-2-7b", "tutor-algoritmos": "phi-2", "tutor-sql": "phi-2",
         "instrucciones": "Llama-3.1-8B", "tutor-estricto": "Llama-3.2-1B"}


def test_recipes_list_shows_every_seed_system():
    out = CliRunner().invoke(main, ["recipes", "list"])
    assert out.exit_code == 0, out.output
    for name, base in SEEDS.items():
        assert name in out.output and base in out.output
    assert {r.name for r in list_recipes()} == set(SEEDS)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_gpu_settings_resolve_for_the_seed_base_model(path):
    """Config resolves, the data passes `data check`, and the LoRA targets exist under the exact
    names of the GPU base model (built on the meta device from its known config)."""
    lines = check_gpu_settings(path)
    assert "usable" in lines[0] and "B parameters" in lines[1], lines
    recipe = load_recipe(path)
    assert recipe.base_model.split("/")[-1].startswith(SEEDS[recipe.name].split("-")[0])


@pytest.fixture(scope="module")
def long_tiny_model_dir(tmp_path_factory):
    """The tiny Llama with room for whole Spanish answers (4096 positions)."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-long"), positions=4096)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_runs_end_to_end_on_a_tiny_model(path, tmp_path, long_tiny_model_dir):
    from afinar.evaluation import evaluate
    from afinar.training import train

    recipe = load_recipe(path, [f"base_model={long_tiny_model_dir}", "quantization=none", "train.max_steps=2",
                                "train.max_seq_len=4096", "train.precision=fp32", f"train.output_dir={tmp_path / 'runs'}",
                                "eval.max_new_tokens=4"])
    result = train(recipe, progress=False, log=lambda *a: None)
    assert result.steps == 2 and (result.adapter_dir / "adapter_model.safetensors").exists()
    assert (result.run_dir / "guard").exists() == (recipe.guard_mode != "off")
    report = evaluate(result.run_dir, limit=2, progress=False, log=lambda *a: None).report
    assert report["loss"]["tuned"]["eval_loss"] is not None and (result.run_dir / "eval" / "report.html").exists()


def test_gpu_check_rejects_targets_its_own_base_does_not_have(tmp_path):
    """A recipe must name its own GPU model's layers; the dense<->o_proj mapping is for CPU stand-ins."""
    from conftest import write

    from afinar.errors import AfinarError

    write(tmp_path / "d.csv", "pregunta;respuesta\n" + "".join(f"¿P {i}?;R {i}.\n" for i in range(12)))
    recipe = write(tmp_path / "r.yaml", "name: x\nbase_model: meta-llama/Llama-2-7b-chat-hf\ndata: {files: [d.csv]}\n"
                                         "lora: {target_modules: [q_proj, dense]}\n")
    with pytest.raises(AfinarError, match="dense -> o_proj"):
        check_gpu_settings(recipe)


def test_lora_targets_map_across_architectures(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from afinar.training.lora import check_targets

    said = []
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert check_targets(model, ["q_proj", "dense", "fc1"], said.append) == ["q_proj", "o_proj", "up_proj"]
    assert "dense -> o_proj" in said[0]
    with pytest.raises(Exception, match="not in this model"):
        check_targets(model, ["c_attn"])
