"""`afinar demo` end to end on the tiny model: every step runs and reports."""

from afinar.demo import run_demo


def test_demo_runs_every_step(tmp_path, tiny_model_dir, capsys):
    out = run_demo(tmp_path / "demo", [f"base_model={tiny_model_dir}", "train.max_steps=2", "train.eval_every=1"], progress=False)
    printed = capsys.readouterr().out
    for step in range(1, 6):
        assert f"[{step}/5]" in printed
    assert out["report"].ok and out["prepared"].counts["train_negative"] > 0
    assert out["result"].steps == 2
    refused = [row for row in out["comparison"] if "[guard: refused" in row["tuned"]]
    assert len(out["comparison"]) == 3 and refused  # the out-of-domain question meets the guard
    assert "afinar chat" in printed
