"""Training on the tiny random model: outputs, adapter vs base, resume, NaN stop, preflight."""

import json
import os
import signal

import pytest
import torch
from conftest import write
from safetensors.torch import load_file

from afinar.errors import AfinarError
from afinar.recipes import load_recipe
from afinar.training import train
from afinar.training import loop as loop_mod
from afinar.training.checkpoint import complete_checkpoints, latest_checkpoint
from afinar.training.loop import TrainingInterrupted


def tiny_recipe(tmp_path, model_dir, *overrides):
    rows = [{"pregunta": f"¿Qué es la pila {i}?", "respuesta": f"Una pila {i} es LIFO."} for i in range(24)]
    write(tmp_path / "d.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    write(tmp_path / "r.yaml", f"name: tiny\nbase_model: {model_dir}\nsystem_prompt: Eres tutor.\n"
          "refusal: Solo pilas.\ndata: {files: [d.jsonl], eval_fraction: 0.2, negatives: 0.1}\n"
          "lora: {r: 4, alpha: 8, dropout: 0.1}\n"
          "train: {batch_size: 4, learning_rate: 0.01, epochs: 2, precision: fp32, output_dir: runs}\n")
    return load_recipe(tmp_path / "r.yaml", list(overrides))


def two_tiny_runs(root, model_dir, *overrides):
    """Two tiny runs trained 2 steps on the same base, named 'tiny' and 'otra' (several adapters, one base)."""
    out = []
    for name in ("tiny", "otra"):
        recipe = tiny_recipe(root / name, model_dir, f"name={name}", "train.max_steps=2", f"train.output_dir={root / 'runs'}", *overrides)
        out.append(train(recipe, progress=False).run_dir)
    return out


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_train_writes_run_folder_and_learns(tmp_path, tiny_model_dir):
    recipe = tiny_recipe(tmp_path, tiny_model_dir, "train.epochs=6")
    result = train(recipe, progress=False)
    run = tmp_path / "runs" / "tiny"
    for name in ["adapter/adapter_model.safetensors", "adapter/adapter_config.json", "adapter/tokenizer.json",
                 "recipe.yaml", "metrics.jsonl", "loss.png", "summary.json", "data/train.jsonl"]:
        assert (run / name).exists(), name
    adapter_dir = run / "adapter"
    assert "<|im_start|>" in (adapter_dir / "chat_template.jinja").read_text()  # the template travels with the adapter
    assert result.best_eval_loss < result.base_eval_loss
    summary = json.loads((run / "summary.json").read_text())
    assert summary["step"] == result.steps > 0 and summary["tokens"] > 0
    assert load_recipe(run / "recipe.yaml") == recipe  # the run folder alone reproduces the run


def test_adapter_changed_base_did_not(tmp_path, tiny_model_dir):
    base_before = load_file(tiny_model_dir / "model.safetensors")
    train(tiny_recipe(tmp_path, tiny_model_dir, "train.max_steps=3"), progress=False)
    adapter = load_file(tmp_path / "runs" / "tiny" / "adapter" / "adapter_model.safetensors")
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: trained if non-zero
    base_after = load_file(tiny_model_dir / "model.safetensors")
    assert all(torch.equal(base_before[k], base_after[k]) for k in base_before)


def test_adapter_loads_with_peft(tmp_path, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    train(tiny_recipe(tmp_path, tiny_model_dir, "train.max_steps=2"), progress=False)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "runs" / "tiny" / "adapter")
    out = model(input_ids=torch.tensor([[1, 5, 7]]))
    assert out.logits.shape[-1] == model.config.vocab_size


def _interrupt_at(monkeypatch, step):
    original = loop_mod._Loop._record

    def record(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if self.state["step"] == step:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(loop_mod._Loop, "_record", record)


def test_sigterm_saves_and_resume_matches_uninterrupted(tmp_path, tiny_model_dir, monkeypatch):
    full = train(tiny_recipe(tmp_path / "a", tiny_model_dir, "train.save_every=2", f"train.output_dir={tmp_path / 'a' / 'runs'}"), progress=False)
    curve_full = [m["loss"] for m in metrics(tmp_path / "a" / "runs" / "tiny") if "loss" in m]

    recipe = tiny_recipe(tmp_path / "b", tiny_model_dir, "train.save_every=2", f"train.output_dir={tmp_path / 'b' / 'runs'}")
    with monkeypatch.context() as patch:
        _interrupt_at(patch, 5)
        with pytest.raises(TrainingInterrupted, match="step 5"):
            train(recipe, progress=False)
    run = tmp_path / "b" / "runs" / "tiny"
    assert latest_checkpoint(run).name == "step-000005"
    resumed = train(recipe, resume=True, progress=False)
    curve_resumed = [m["loss"] for m in metrics(run) if "loss" in m]
    assert resumed.steps == full.steps
    assert curve_resumed == pytest.approx(curve_full, abs=1e-4)


def test_half_written_checkpoint_is_ignored(tmp_path, tiny_model_dir):
    train(tiny_recipe(tmp_path, tiny_model_dir, "train.max_steps=4", "train.save_every=2"), progress=False)
    run = tmp_path / "runs" / "tiny"
    (run / "checkpoints" / "step-000099").mkdir()  # interrupted mid-write: no COMPLETE marker
    assert latest_checkpoint(run).name == "step-000004"
    assert len(complete_checkpoints(run)) == 2  # older ones pruned


def test_non_finite_loss_stops_with_clear_message(tmp_path, tiny_model_dir, monkeypatch):
    from afinar.training.loss import AnswerOnlyLM

    original = AnswerOnlyLM.forward
    calls = {"n": 0}

    def forward(self, *args, **kwargs):
        calls["n"] += self.training
        out = original(self, *args, **kwargs)
        return out * float("nan") if calls["n"] > 3 and self.training else out

    monkeypatch.setattr(AnswerOnlyLM, "forward", forward)
    with pytest.raises(AfinarError, match=r"loss became nan at step 4.*last good checkpoint is .*step-000003"):
        train(tiny_recipe(tmp_path, tiny_model_dir, "train.save_every=1"), progress=False)


def test_unwritable_output_is_reported_before_training(tmp_path, tiny_model_dir):
    blocker = write(tmp_path / "afile", "x")
    with pytest.raises(AfinarError, match="cannot write the run folder"):
        train(tiny_recipe(tmp_path, tiny_model_dir, f"train.output_dir={blocker}"), progress=False)


def test_low_disk_is_reported_before_training(tmp_path, tiny_model_dir, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 10**6, 10**6))
    with pytest.raises(AfinarError, match="MB free"):
        train(tiny_recipe(tmp_path, tiny_model_dir), progress=False)


def test_resume_without_checkpoint_is_an_error(tmp_path, tiny_model_dir):
    with pytest.raises(AfinarError, match="no complete checkpoint"):
        train(tiny_recipe(tmp_path, tiny_model_dir), resume=True, progress=False)


def test_unknown_target_module_names_the_real_ones(tmp_path, tiny_model_dir):
    with pytest.raises(AfinarError, match=r"\['query'\] not in this model; its linear layers are .*q_proj"):
        train(tiny_recipe(tmp_path, tiny_model_dir, "lora.target_modules=[query]"), progress=False)


@pytest.mark.parametrize("override", ["lora.dora=true", "train.packing=on", "train.gradient_checkpointing=on", "train.grad_accum=2"])
def test_training_variants_run(tmp_path, tiny_model_dir, override):
    result = train(tiny_recipe(tmp_path, tiny_model_dir, "train.max_steps=2", override), progress=False)
    assert result.steps == 2 and result.final_train_loss > 0


def test_two_process_accelerate_run_saves_one_adapter(tmp_path, tiny_model_dir):
    """DDP on CPU (gloo): `accelerate launch --multi_gpu` on a machine without GPUs runs MULTI_CPU."""
    import subprocess
    import sys

    tiny_recipe(tmp_path, tiny_model_dir)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
           "-m", "afinar.cli", "train", str(tmp_path / "r.yaml"), "--no-progress", "--set", "train.max_steps=3"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("trained 3 steps") == 1, proc.stdout  # only the main process reports
    run = tmp_path / "runs" / "tiny"
    assert (run / "adapter" / "adapter_model.safetensors").exists()
    rows = metrics(run)
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]  # one writer, no duplicated rows
    lrs = [r["lr"] for r in rows if "lr" in r]
    assert lrs[-1] > 0  # regression: accelerate's scheduler wrapper ran the schedule twice as fast


def test_split_micro_respects_the_token_budget():
    from afinar.chat_template import Encoded
    from afinar.training.batches import split_micro

    encoded = [Encoded([1] * n, [1] * n) for n in (100, 300, 120, 900, 250, 2000)]
    micro = split_micro(list(range(6)), encoded, budget=600)
    assert sorted(i for m in micro for i in m) == list(range(6))  # nothing lost
    for m in micro:
        longest = max(len(encoded[i].input_ids) for i in m)
        assert longest * len(m) <= 600 or len(m) == 1
    assert [5] in micro and [3] in micro  # longer than the budget: alone


def test_hf_token_never_reaches_the_run_folder(tmp_path, tiny_model_dir, monkeypatch, capsys):
    secret = "hf_" + "Zq7" * 12
    monkeypatch.setenv("HF_TOKEN", secret)
    train(tiny_recipe(tmp_path, tiny_model_dir, "train.max_steps=2", "train.save_every=1"), progress=False)
    for path in (tmp_path / "runs").rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    assert secret not in capsys.readouterr().out


def test_two_trainings_with_different_precision_in_one_process(tmp_path, tiny_model_dir):
    """Regression: accelerate's process-wide state refused a bf16 run after an fp32 one."""
    train(tiny_recipe(tmp_path / "a", tiny_model_dir, "train.max_steps=1", "train.precision=fp32"), progress=False)
    result = train(tiny_recipe(tmp_path / "b", tiny_model_dir, "train.max_steps=1", "train.precision=bf16"), progress=False)
    assert result.steps == 1


def test_an_interrupted_run_says_so_wherever_it_is_loaded(tmp_path, tiny_model_dir, monkeypatch):
    from fastapi.testclient import TestClient

    from afinar.assistant import Engine
    from afinar.export import export_run
    from afinar.models import run_incomplete
    from afinar.serving.api import create_app

    recipe = tiny_recipe(tmp_path, tiny_model_dir, "train.eval_every=1", "guard.mode=off", "grounding.mode=off")
    with monkeypatch.context() as patch:
        _interrupt_at(patch, 3)
        with pytest.raises(TrainingInterrupted, match=r"afinar train .*r\.yaml --resume"):
            train(recipe, progress=False)
    run = tmp_path / "runs" / "tiny"
    assert (run / "adapter" / "adapter_config.json").exists()  # the best adapter so far: servable
    stopped = run_incomplete(run)
    assert stopped.startswith("this run stopped at step 3 of 12; resume with: afinar train ")
    logged = []
    engine = Engine([run], log=logged.append)
    assert any(stopped in line and line.startswith("warning:") for line in logged)
    client = TestClient(create_app(engine))
    assert client.get("/v1/models").json()["data"][0]["incomplete"] == stopped
    assert client.get("/studio/personas").json()["personas"][0]["incomplete"] == stopped
    with pytest.raises(AfinarError, match="stopped at step 3 of 12.*--force"):
        export_run(run, "merged", tmp_path / "out")
    assert not (tmp_path / "out").exists()

    train(recipe, resume=True, progress=False)
    assert run_incomplete(run) is None
    assert json.loads((run / "status.json").read_text())["complete"] is True


def test_a_signal_says_at_once_that_training_stops_after_this_step(capsys):
    """Regression: a SIGTERM during a minutes-long QLoRA step on a CPU printed nothing until the
    step and its checkpoint were done; a second signal goes to the previous handler at once."""
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        with loop_mod._StopFlag() as stop:
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.signal == signal.SIGTERM and not seen
            assert "stopping after the step in progress" in capsys.readouterr().err
            os.kill(os.getpid(), signal.SIGTERM)  # the second one is not held back
            assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)
