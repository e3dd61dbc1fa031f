"""`afinar demo` end to end on the tiny model: every step runs and reports."""

from afinar.cli.demo import run_demo


def test_demo_runs_every_step(tmp_path, tiny_model_dir, capsys):
    out = run_demo(tmp_path / "demo", [f"base_model={tiny_model_dir}", "train.max_steps=2", "train.eval_every=1",
                                                 "eval.max_new_tokens=4"], progress=False)
    printed = capsys.readouterr().out
    for step in range(1, 6):
        assert f"[{step}/5]" in printed
    assert out["report"].ok and out["prepared"].counts["train_negative"] > 0
    assert out["result"].steps == 2
    report = out["evaluation"].report
    assert out["evaluation"].html_path.exists() and report["probe"].endswith("tutor_sondeo.jsonl")
    assert len(report["items"]) == len(out["prepared"].eval) + 55  # the held-out split and the bundled probe
    assert f"eval loss   base {report['loss']['base']['eval_loss']:.3f}" in printed
    assert report["summary"]["probe"]["tuned/refuse"]["injection_refused"] > 0.5  # injections meet the guard
    assert "afinar chat" in printed
