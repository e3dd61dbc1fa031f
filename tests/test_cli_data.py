"""The data commands in-process: output lines, exit statuses, JSON, init."""

import json

from click.testing import CliRunner
from conftest import write

from afinar.cli import main
from afinar.recipes import load_recipe


def run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def faq(tmp_path, n=12, extra=""):
    return write(tmp_path / "faq.csv", "pregunta;respuesta\n" + "".join(f"¿P{i}?;R{i}\n" for i in range(n)) + extra)


def test_check_ok_exit_0(tmp_path):
    result = run("data", "check", str(faq(tmp_path)), "--no-tokens")
    assert result.exit_code == 0, result.output
    assert "12 usable" in result.output and "OK: the data is usable" in result.output


def test_check_errors_exit_1_with_path_line(tmp_path):
    result = run("data", "check", str(faq(tmp_path, extra="¿x?;y;z\n")), "--no-tokens")
    assert result.exit_code == 1
    assert "faq.csv:14: error: row has 3 fields" in result.output


def test_check_json(tmp_path):
    result = run("data", "check", str(faq(tmp_path)), "--no-tokens", "--json")
    data = json.loads(result.output)
    assert data["ok"] and data["usable"] == 12 and data["files"][0]["delimiter"] == ";"


def test_check_with_tokenizer(tmp_path, tiny_model_dir):
    result = run("data", "check", str(faq(tmp_path)), "--model", str(tiny_model_dir), "--max-seq-len", "64")
    assert result.exit_code == 0 and "tokens per example" in result.output


def test_check_mapping_flag(tmp_path):
    path = write(tmp_path / "x.csv", "Consulta;Lo dicho\n" + "".join(f"q{i};a{i}\n" for i in range(10)))
    assert run("data", "check", str(path), "--no-tokens").exit_code == 1
    result = run("data", "check", str(path), "--no-tokens", "--map", "question=Consulta", "--map", "answer=Lo dicho")
    assert result.exit_code == 0, result.output


def test_missing_file_is_one_clean_line(tmp_path):
    result = CliRunner().invoke(main, ["data", "check", str(tmp_path / "nope.csv"), "--no-tokens"])
    assert result.exit_code == 1 and "Error:" in result.output and "no such file" in result.output
    assert "Traceback" not in result.output


def test_init_then_prepare(tmp_path, tiny_model_dir):
    data = faq(tmp_path, 20)
    result = run("init", str(data))
    assert result.exit_code == 0, result.output
    recipe_path = tmp_path / "faq.recipe.yaml"
    recipe = load_recipe(recipe_path)
    assert recipe.data.columns == {"question": "pregunta", "answer": "respuesta"} and recipe.refusal
    assert run("init", str(data)).exit_code == 1  # refuses to overwrite
    result = run("data", "prepare", str(recipe_path), "--set", f"base_model={tiny_model_dir}", "--out", str(tmp_path / "p"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "p" / "train.jsonl").exists() and "refusals" in result.output


def test_bad_recipe_lists_every_problem(tmp_path):
    path = write(tmp_path / "r.yaml", "nam: x\ntrain: {epochs: 0}\n")
    result = CliRunner().invoke(main, ["data", "prepare", str(path)])
    assert result.exit_code == 1
    assert "nam: unknown field; did you mean 'name'?" in result.output and "train.epochs" in result.output
    assert "data.files" in result.output and "Traceback" not in result.output


def test_help_is_instant_and_lists_commands():
    result = run("--help")
    assert "data" in result.output and "demo" in result.output and "init" in result.output
