"""bench/gpu_check.py stays runnable: its --cpu-tiny mode runs the GPU check's whole code path
(tokenizer, random Llama models in both shapes, FAQ, recipes, afinar's training loop, the FLOP
and memory figures) on the CPU with tiny shapes, so the script cannot rot between the rare
moments a GPU is at hand. Run in a subprocess, as the GPU machine runs it (~15 s here).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"


def test_gpu_check_cpu_tiny_reports_every_figure(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--cpu-tiny", "--out", str(out)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text(encoding="utf-8"))

    assert report["mode"] == "cpu-tiny"
    assert set(report["models"]) == {"1b", "8b"}
    assert report["models"]["1b"]["tie_word_embeddings"] and not report["models"]["8b"]["tie_word_embeddings"]
    assert report["matmul"]["peak_flops"] > 0 and report["matmul"]["afinar_matmul_flops_default"] > 0
    runs = {(r["model"], r["method"]): r for r in report["runs"]}
    assert {("1b", "lora"), ("8b", "lora"), ("8b", "qlora")} <= set(runs)
    trained = [r for r in runs.values() if "skipped" not in r]
    assert ("1b", "lora") in {(r["model"], r["method"]) for r in trained}
    assert ("8b", "lora") in {(r["model"], r["method"]) for r in trained}
    for r in trained:
        assert "error" not in r, r
        assert r["steps"] == r["plan"]["steps"] and r["tokens"] > 0
        assert r["tokens_per_s"] > 0 and r["tokens_per_s_steady"] > 0
        assert r["flops_per_token"] > 0 and 0 < r["share_of_peak"] < 1
        assert r["achieved_flops"] == r["flops_per_token"] * r["tokens_per_s_steady"]
        assert r["measured_peak_bytes"] > 0 and r["estimate"]["peak_bytes"] > 0 and r["estimate_ratio"] > 0
        # doctor's estimate counts the model that was trained
        assert r["estimate"]["parameters"] == report["models"][r["model"]]["parameters"]
        assert 0 < r["token_profile"]["label_share"] < 1 and r["token_profile"]["max_len"] <= 1024
    if "skipped" in runs[("8b", "qlora")]:
        assert "bitsandbytes" in runs[("8b", "qlora")]["skipped"]
    targets = [v["target"] for v in report["verdicts"]]
    assert any("8b lora" in t and "matmul peak" in t for t in targets)
    assert sum("memory estimate" in t for t in targets) == len(trained)
    assert not any(v["applies"] for v in report["verdicts"])  # tiny CPU figures judge nothing

    for name in ("1b lora", "8b lora"):  # the printed summary carries the same figures
        line = next(ln for ln in proc.stdout.splitlines() if ln.strip().startswith(f"{name}:") and "tokens/s" in ln)
        assert "of peak" in line and "doctor" in line and "GiB" in line
