"""Recipes: defaults < file < --set, every problem at once, resolved recipe round-trip."""

import pytest
import yaml
from conftest import write

from afinar.errors import RecipeError
from afinar.recipes import field_docs, load_recipe, parse_overrides


@pytest.fixture
def recipe_file(tmp_path):
    write(tmp_path / "faq.csv", "pregunta;respuesta\na;b\n")
    return write(tmp_path / "r.yaml", "name: banco\nrefusal: No sé.\ndata:\n  files: [faq.csv]\ntrain:\n  epochs: 2\n")


def test_defaults_file_and_overrides(recipe_file, tmp_path):
    recipe = load_recipe(recipe_file, ["train.epochs=5", "lora.r=8", "guard.mode=strict"])
    assert recipe.train.epochs == 5 and recipe.lora.r == 8 and recipe.guard_mode == "strict"
    assert recipe.train.learning_rate == 2e-4  # default
    assert recipe.data.files == [str(tmp_path / "faq.csv")]  # resolved against the recipe folder
    assert load_recipe(recipe_file).train.epochs == 2


def test_all_problems_reported_at_once(tmp_path):
    path = write(tmp_path / "r.yaml", "name: 'mal nombre'\nlearnig_rate: 3\ndata:\n  files: [nope.csv]\n"
                 "train:\n  epochs: -1\n  learning_rate: abc\nlora:\n  rr: 4\nguard:\n  mode: strict\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    text = "\n".join(info.value.problems)
    for expected in ["name:", "learnig_rate: unknown field", "train.epochs:", "train.learning_rate:",
                     "lora.rr: unknown field; did you mean 'r'?", "data.files[0]: no such file"]:
        assert expected in text, (expected, text)
    assert len(info.value.problems) >= 6


def test_consistency_strict_needs_refusal(tmp_path):
    write(tmp_path / "d.csv", "q,a\n")
    path = write(tmp_path / "r.yaml", "data: {files: [d.csv]}\nguard: {mode: strict}\n")
    with pytest.raises(RecipeError, match="refusal"):
        load_recipe(path)


def test_bad_yaml_and_bad_set(tmp_path):
    with pytest.raises(RecipeError, match="line 2"):
        load_recipe(write(tmp_path / "r.yaml", "name: x\n  bad: [\n"))
    with pytest.raises(RecipeError, match="expected key=value"):
        parse_overrides(["train.epochs"])


def test_resolved_recipe_round_trips(recipe_file, tmp_path):
    recipe = load_recipe(recipe_file, ["train.learning_rate=1e-4"])
    again = write(tmp_path / "sub" / "resolved.yaml", recipe.to_yaml())
    assert load_recipe(again) == recipe
    assert yaml.safe_load(recipe.to_yaml())["data"]["schema"] == "auto"


def test_every_field_is_documented():
    rows = field_docs()
    assert len(rows) > 30
    assert all(doc for _, _, doc in rows), [k for k, _, d in rows if not d]


def test_yaml_on_off_words_are_accepted(tmp_path):
    """Regression: YAML 1.1 reads bare on/off as booleans, which failed `packing: on` and `mode: off`."""
    write(tmp_path / "d.csv", "q,a\n")
    recipe = load_recipe(write(tmp_path / "r.yaml", "data: {files: [d.csv]}\ntrain: {packing: on, gradient_checkpointing: off}\nguard: {mode: off}\n"))
    assert (recipe.train.packing, recipe.train.gradient_checkpointing, recipe.guard.mode) == ("on", "off", "off")


def test_set_with_invalid_yaml_value_is_a_clear_error():
    """Regression: `--set key=[¿a?, b]` raised a yaml ParserError traceback."""
    with pytest.raises(RecipeError, match="not valid YAML.*quote it"):
        parse_overrides(["interview.questions=[¿Qué función?, ¿Tu rol?]"])
