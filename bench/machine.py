"""What the benchmarks ran on, and how fast this CPU multiplies matrices.

    .venv/bin/python bench/machine.py        # prints the machine and its measured matmul throughput

`matmul_peak()` is the yardstick of the training benchmark's "share of the machine": the best
bf16 (and fp32) matmul throughput torch reaches here, with every thread torch uses, over square
products large enough to keep the cores busy and over the shapes of the embedded model's own
layers. A training loop cannot beat it; how close it comes is how little it wastes.

`Clock`, `peak_rss_mb`, `busy_seconds`, `run_worker` and `quick_demo_run` are the helpers the
benchmark scripts share.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import resource
import subprocess
import time
from pathlib import Path

# square products (the peak) and the embedded model's layer shapes: tokens x hidden @ hidden x out
SQUARE_SIZES = (1024, 2048, 3072)
MODEL_SHAPES = ((1024, 576, 1536), (1024, 1536, 576), (1024, 576, 576), (256, 576, 49152))


class Clock:
    """Accumulates wall time and this process's CPU time (all threads) over timed sections."""

    def __init__(self):
        self.wall = 0.0
        self.cpu = 0.0
        self.calls = 0

    def __enter__(self):
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall += time.perf_counter() - self._wall
        self.cpu += time.process_time() - self._cpu
        self.calls += 1

    def wrap(self, fn):
        def wrapper(*a, **k):
            with self:
                return fn(*a, **k)
        return wrapper


def peak_rss_mb() -> float:
    """This process's resident-memory high-water mark (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def busy_seconds() -> float:
    """CPU seconds spent by every process on the machine so far (from /proc/stat)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return float("nan")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def run_worker(argv: list[str], log_path: Path, label: str, cwd: Path) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run one benchmark worker in its own process (stdout captured, stderr appended to log_path).

    Returns the process, its wall time, and the share of the machine's CPUs that other processes
    used meanwhile (when it is high, the wall time is not to be trusted)."""
    began, busy0 = time.perf_counter(), busy_seconds()
    child0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"\n===== {label} =====\n")
        log.flush()
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=log, text=True, cwd=str(cwd))
    wall = time.perf_counter() - began
    child1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = (child1.ru_utime - child0.ru_utime) + (child1.ru_stime - child0.ru_stime)
    others = max(0.0, busy_seconds() - busy0 - own) / (wall * (os.cpu_count() or 1))
    return proc, wall, others


def quick_demo_run() -> Path:
    """The demo recipe trained for two steps, in a temporary folder: a real run to generate and
    serve with (the weights do not change what generating costs)."""
    import tempfile

    from afinar.cli.demo import demo_recipe_path
    from afinar.recipes import load_recipe
    from afinar.training import train

    out = Path(tempfile.mkdtemp(prefix="afinar-bench-run-"))
    recipe = load_recipe(demo_recipe_path(), [f"train.output_dir={out}", "train.max_steps=2", "data.paraphrases=0"])
    return train(recipe, progress=False, log=lambda *a, **k: None).run_dir


def _gflops(m: int, k: int, n: int, dtype, seconds: float) -> float:
    """Best GFLOP/s of an m x k @ k x n product over `seconds` of repeats."""
    import torch

    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    for _ in range(3):  # warm-up: thread pool, kernel selection
        torch.mm(a, b)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        began = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * m * k * n / (time.perf_counter() - began) / 1e9)
    return best


def matmul_peak(seconds: float = 1.0) -> dict:
    """Measured matmul throughput in GFLOP/s: bf16 and fp32, square and model-shaped products."""
    import torch

    out = {"threads": torch.get_num_threads()}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        square = {n: _gflops(n, n, n, dtype, seconds) for n in SQUARE_SIZES}
        shaped = {f"{m}x{k}@{k}x{n}": _gflops(m, k, n, dtype, seconds / 2) for m, k, n in MODEL_SHAPES}
        out[name] = {"peak_gflops": max(square.values()), "square": square, "model_shapes": shaped}
    return out


def machine_info() -> dict:
    """CPU, memory, library versions and the date, for every results file."""
    import torch
    import transformers

    from afinar.training.runtime import cpu_supports_bf16

    cpu, mem_gb = "?", None
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
        kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal:"))
        mem_gb = round(kb / 1024**2, 1)
    except (OSError, StopIteration, ValueError):
        pass
    versions = {}
    for name in ("peft", "accelerate", "trl", "llama_cpp"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    return {
        "cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "cpu_bf16": cpu_supports_bf16(),
        "ram_gb": mem_gb, "gpu": torch.cuda.is_available(), "python": platform.python_version(),
        "torch": torch.__version__, "transformers": transformers.__version__, **versions,
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def main() -> None:
    import json

    print(json.dumps({"machine": machine_info(), "matmul": matmul_peak()}, indent=2))


if __name__ == "__main__":
    main()
