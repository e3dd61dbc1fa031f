"""The web studio's work: datasets uploaded from the page, checked, trained and evaluated.

A beginner with no terminal goes CSV -> `data check` report -> training (live loss) -> eval
report -> chat, from the page. Each training job runs afinar's own CLI in a child process
(`afinar train`, then `afinar eval`), so the server stays responsive and a crash in training
cannot take the API down; the page polls the job for its state and loss curve, read from the
run's metrics.jsonl.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from afinar.errors import AfinarError

ALLOWED_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".txt")
MAX_UPLOAD_BYTES = 20_000_000


@dataclass
class Job:
    id: str
    name: str
    recipe: Path
    run_dir: Path
    state: str = "training"  # training | evaluating | done | failed
    error: str = ""
    started: float = field(default_factory=time.time)
    log: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        metrics = _metrics(self.run_dir / "metrics.jsonl")
        summary = self.run_dir / "summary.json"
        return {"id": self.id, "name": self.name, "state": self.state, "error": self.error,
                "seconds": round(time.time() - self.started), "run": str(self.run_dir),
                "loss": [[m["step"], m["loss"]] for m in metrics if "loss" in m],
                "eval_loss": [[m["step"], m["eval_loss"]] for m in metrics if "eval_loss" in m],
                "summary": json.loads(summary.read_text()) if summary.exists() else None,
                "report": (self.run_dir / "eval" / "report.html").exists(), "log": self.log[-8:]}


class Studio:
    """Uploads, checks and training jobs under `workdir` (uploads/, recipes/, runs/)."""

    def __init__(self, workdir: str | Path, base_model: str = "embedded", train_overrides: list[str] | None = None):
        self.workdir = Path(workdir)
        self.base_model = base_model
        self.train_overrides = train_overrides or []  # e.g. a few steps, for tests
        self.jobs: dict[str, Job] = {}

    def save_upload(self, filename: str, data: bytes) -> Path:
        """Store an uploaded dataset under a safe name; returns its path."""
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(filename or "").name).strip("._")
        if not name or Path(name).suffix.lower() not in ALLOWED_SUFFIXES:
            raise AfinarError(f"{filename!r}: upload a CSV, TSV, JSON or JSONL dataset ({', '.join(ALLOWED_SUFFIXES)})")
        if len(data) > MAX_UPLOAD_BYTES:
            raise AfinarError(f"{filename}: larger than {MAX_UPLOAD_BYTES // 1_000_000} MB")
        path = self.workdir / "uploads" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def check(self, path: Path) -> dict:
        """`afinar data check` on an uploaded file: the report as a dict, plus its summary lines."""
        from afinar.data import check_data

        report = check_data([str(path)], tokenizer=None)
        return {**report.to_dict(), "file": path.name, "summary": report.summary_lines(),
                "messages": [str(i) for i in report.issues[:200]]}

    def start_training(self, dataset: str, name: str | None = None, epochs: float | None = None) -> Job:
        """Write a starter recipe for an uploaded dataset and train it in a child process."""
        from afinar.recipes.starter import write_starter_recipe

        path = self.workdir / "uploads" / Path(dataset).name
        if not path.exists():
            raise AfinarError(f"{dataset}: upload it first")
        recipe = write_starter_recipe(path, self.workdir / "recipes" / f"{path.stem}.recipe.yaml", name, force=True)
        from afinar.recipes import load_recipe

        overrides = [f"base_model={self.base_model}", f"train.output_dir={self.workdir / 'runs'}", *self.train_overrides]
        if epochs:
            overrides.append(f"train.epochs={epochs}")
        loaded = load_recipe(recipe, overrides)
        if any(j.name == loaded.name and j.state in ("training", "evaluating") for j in self.jobs.values()):
            raise AfinarError(f"{loaded.name!r} is already training")
        job = Job(uuid.uuid4().hex[:12], loaded.name, recipe, self.workdir / "runs" / loaded.name)
        self.jobs[job.id] = job
        threading.Thread(target=self._run, args=(job, overrides), daemon=True).start()
        return job

    def reindex(self, path: Path) -> list[Path]:
        """Rebuild the index of every finished run trained on the uploaded file `path` (a dataset
        uploaded again, edited): its new and changed records are answered without retraining."""
        from afinar.index.store import rebuild_run_index

        done = [j.run_dir for j in self.jobs.values() if j.state == "done"]
        runs = [run for run in done if str(path.resolve()) in _data_files(run)]
        for run in runs:
            rebuild_run_index(run)
        return runs

    def job(self, job_id: str) -> Job:
        if job_id not in self.jobs:
            raise AfinarError(f"no training job {job_id!r}")
        return self.jobs[job_id]

    def _run(self, job: Job, overrides: list[str]) -> None:
        cli = [sys.executable, "-m", "afinar.cli"]
        sets = [arg for o in overrides for arg in ("--set", o)]
        steps = [("training", [*cli, "train", str(job.recipe), "--no-progress", *sets]),
                 ("evaluating", [*cli, "eval", str(job.run_dir), "--no-progress", "--limit", "20"])]
        for state, command in steps:
            job.state = state
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=self.workdir)
            for line in proc.stdout:
                if line.strip():
                    job.log.append(line.rstrip()[:300])
            if proc.wait() != 0:
                job.state, job.error = "failed", next((ln for ln in reversed(job.log) if ln.startswith("Error")), f"{state} failed")
                return
        job.state = "done"


def _data_files(run_dir: Path) -> list[str]:
    from afinar.recipes import load_recipe

    path = run_dir / "recipe.yaml"
    return load_recipe(path, check_files=False).data.files if path.exists() else []


def _metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # the line being written right now
            continue
    return rows
