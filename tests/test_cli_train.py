"""`afinar train` and `afinar doctor` in-process."""

from click.testing import CliRunner
from test_train import tiny_recipe

from afinar.cli import main


def test_train_command_prints_summary(tmp_path, tiny_model_dir):
    tiny_recipe(tmp_path, tiny_model_dir)
    result = CliRunner().invoke(main, ["train", str(tmp_path / "r.yaml"), "--no-progress", "--set", "train.max_steps=2"])
    assert result.exit_code == 0, result.output
    assert "trained 2 steps" in result.output and "adapter:" in result.output


def test_train_resume_without_checkpoint_is_one_clean_line(tmp_path, tiny_model_dir):
    tiny_recipe(tmp_path, tiny_model_dir)
    result = CliRunner().invoke(main, ["train", str(tmp_path / "r.yaml"), "--resume", "--no-progress"])
    assert result.exit_code == 1 and "Error: --resume: no complete checkpoint" in result.output
    assert "Traceback" not in result.output


def test_doctor_with_recipe_estimates_memory_and_time(tmp_path, tiny_model_dir):
    tiny_recipe(tmp_path, tiny_model_dir)
    result = CliRunner().invoke(main, ["doctor", str(tmp_path / "r.yaml")])
    assert result.exit_code == 0, result.output
    for text in ["torch", "bf16", "bitsandbytes", "peak memory", "time per epoch"]:
        assert text in result.output


def test_doctor_warns_when_a_run_will_not_fit(tmp_path, tiny_model_dir, monkeypatch):
    from afinar.training import runtime

    monkeypatch.setattr(runtime, "available_ram", lambda: 1024)
    tiny_recipe(tmp_path, tiny_model_dir)
    result = CliRunner().invoke(main, ["doctor", str(tmp_path / "r.yaml")])
    assert "will not fit" in result.output
