"""`afinar train`: the LoRA/QLoRA training loop.

Our own loop rather than transformers' Trainer or TRL's SFTTrainer, because three things that
make it several times faster on a CPU are awkward to get from them: the loss is computed only on
answer tokens and the output layer (49k x 576 for the embedded model) is applied only to those
positions; batches are length-grouped (or packed) so nothing is padded to a fixed length; the
frozen base stays in bf16 while the adapters train in fp32 under bf16 autocast. accelerate
provides the device, mixed precision and multi-process (DDP/FSDP/DeepSpeed) plumbing, peft the
adapters, bitsandbytes the 4-bit base. `make bench` measures the result against the seeds' recipe.

Steps of `train(recipe)`:
  1. preflight: the run folder is writable and has room (before any model is loaded);
  2. prepare the data (check, split, augment) into runs/<name>/data;
  3. load the base (bf16/fp32, or NF4 for QLoRA) and attach the adapters;
  4. resume from the newest complete checkpoint when asked;
  5. loop: micro-batches -> answer-only loss -> optimizer step; eval and checkpoint every N
     steps; stop cleanly on SIGTERM/Ctrl-C (checkpoint first) or on a non-finite loss;
  6. write the best adapter (by eval loss), tokenizer and chat template, metrics, plot, summary.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from afinar.errors import AfinarError
from afinar.recipes import Recipe
from afinar.training.batches import collate, epoch_order, split_micro
from afinar.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from afinar.training.examples import load_examples, tokens_to_train
from afinar.training.lora import build_model
from afinar.training.loss import AnswerOnlyLM, eval_loss
from afinar.training.runtime import preflight, resolve_setup, resume_command


class TrainingInterrupted(AfinarError):
    """SIGTERM or Ctrl-C: a checkpoint was saved and `--resume` continues from it."""

    exit_code = 130


@dataclass
class TrainResult:
    run_dir: Path
    adapter_dir: Path
    steps: int
    tokens: int
    seconds: float
    base_eval_loss: float | None
    best_eval_loss: float | None
    best_step: int | None
    final_train_loss: float | None
    main_process: bool = True  # False on the other ranks of a multi-process run

    def to_dict(self) -> dict:
        d = asdict(self)
        d["run_dir"], d["adapter_dir"] = str(self.run_dir), str(self.adapter_dir)
        return d


class _StopFlag:
    """Remembers SIGTERM/SIGINT so the loop can checkpoint at the next step boundary."""

    def __init__(self):
        self.signal: int | None = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. a web worker): no handler
                pass
        return self

    def _handle(self, signum, frame):
        if self.signal is not None:  # the second one: stop now, from the last checkpoint
            self.__exit__()
            os.kill(os.getpid(), signum)
            return
        self.signal = signum
        # a QLoRA step on a CPU can take minutes: say at once what will happen
        print(f"\nafinar: signal {signum} received; stopping after the step in progress, with a checkpoint "
              "(`--resume` continues from it). Send it again to stop at once, from the last checkpoint.",
              file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


def train(recipe: Recipe, *, resume: bool = False, reuse_data: bool = False, progress: bool = True, log=print) -> TrainResult:
    """Fine-tune `recipe.base_model` on the recipe's data and write runs/<name>/.

    `reuse_data` trains on runs/<name>/data as already prepared (by `afinar data prepare`)
    instead of preparing it again; `resume` implies it.

    Raises:
        AfinarError: bad data, unwritable output, no disk space, non-finite loss.
        TrainingInterrupted: stopped by a signal after saving a checkpoint.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    run_dir = Path(recipe.train.output_dir) / recipe.name
    setup = resolve_setup(recipe)
    # accelerate keeps one AcceleratorState per process and refuses a second Accelerator with
    # another precision; a process that trains twice (tests, the web studio) needs it cleared.
    # The process group (PartialState) is kept, so multi-process launches are unaffected.
    AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(mixed_precision=setup.mixed_precision, cpu=setup.device == "cpu")
    main = accelerator.is_main_process
    if main:
        preflight(recipe, run_dir, resume)
    accelerator.wait_for_everyone()
    tokenizer, train_set, eval_set = load_examples(recipe, run_dir, accelerator, resume or reuse_data, log if main else _quiet)
    train_tokens = tokens_to_train(recipe, train_set)
    model = build_model(recipe, setup, accelerator.device, train_tokens, log if main else _quiet)
    loop = _Loop(recipe, setup, run_dir, accelerator, model, tokenizer, train_set, eval_set, progress, log)
    return loop.run(resume)


def _quiet(*args, **kwargs):
    pass


class _Loop:
    """State of one training run; `run` drives it (kept in a class so each piece stays short)."""

    def __init__(self, recipe, setup, run_dir, accelerator, model, tokenizer, train_set, eval_set, progress, log):
        self.recipe, self.setup, self.run_dir, self.acc = recipe, setup, run_dir, accelerator
        self.tokenizer, self.train_set, self.eval_set = tokenizer, train_set, eval_set
        self.log = log if accelerator.is_main_process else _quiet
        self.progress = progress and accelerator.is_main_process
        self.peft_model = model
        self.pad_id = tokenizer.pad_token_id
        t = recipe.train
        self.steps_per_epoch = math.ceil(len(self._rank_batches(0)) / t.grad_accum)
        total = math.ceil(t.epochs * self.steps_per_epoch)
        self.total_steps = min(total, t.max_steps) if t.max_steps else total
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=t.learning_rate, weight_decay=t.weight_decay)
        scheduler = _scheduler(optimizer, t.lr_scheduler, int(t.warmup_ratio * self.total_steps), self.total_steps)
        # the scheduler stays outside accelerate.prepare: its wrapper steps once per process, which
        # with N processes would run the schedule N times too fast (total_steps is already per rank)
        self.module, self.optimizer = accelerator.prepare(AnswerOnlyLM(model), optimizer)
        self.scheduler = scheduler
        self.state = {"step": 0, "epoch": 0, "batch": 0, "tokens": 0, "seconds": 0.0,
                      "best_eval_loss": None, "best_step": None, "base_eval_loss": None}
        self.metrics: list[dict] = []
        self.tensorboard = _tensorboard(run_dir) if t.tensorboard and accelerator.is_main_process else None

    def _rank_batches(self, epoch: int) -> list[list[int]]:
        t = self.recipe.train
        batches = epoch_order(self.train_set, t.batch_size, t.seed, epoch, self.setup.packing, t.max_seq_len)
        world, rank = self.acc.num_processes, self.acc.process_index
        if world > 1:  # every rank takes the same number of batches (wrapping around, like DistributedSampler)
            per_rank = math.ceil(len(batches) / world)
            batches = (batches * 2)[: per_rank * world]
            batches = batches[rank::world]
        return batches

    def run(self, resume: bool) -> TrainResult:
        if resume:
            self._resume()
        if self.state["base_eval_loss"] is None and self.eval_set:
            self.state["base_eval_loss"] = self._eval(base=True)
            self._log_metrics({"step": 0, "eval_loss": round(self.state["base_eval_loss"], 5)})  # the curve starts at the base
            self.log(f"eval loss before training (base model): {self.state['base_eval_loss']:.4f}")
        self.log(f"training: {len(self.train_set)} examples, {self.total_steps} steps "
                 f"({self.steps_per_epoch} per epoch), eval on {len(self.eval_set)} examples -> {self.run_dir}")
        from tqdm.auto import tqdm

        self._status(complete=False)  # until _finish says otherwise, whatever stops the process
        bar = tqdm(total=self.total_steps, initial=self.state["step"], disable=not self.progress, unit="step", desc="train", dynamic_ncols=True)
        with _StopFlag() as stop, bar:
            self._epochs(bar, stop)
        return self._finish()

    def _epochs(self, bar, stop) -> None:
        t = self.recipe.train
        while self.state["step"] < self.total_steps:
            batches = self._rank_batches(self.state["epoch"])
            for start in range(self.state["batch"], len(batches), t.grad_accum):
                self._step(batches[start : start + t.grad_accum], bar)
                self.state["batch"] = start + t.grad_accum
                if self._after_step(stop, end_of_epoch=self.state["batch"] >= len(batches)):
                    return
            self.state["epoch"] += 1
            self.state["batch"] = 0

    def _step(self, group: list[list[int]], bar) -> None:
        began = time.perf_counter()
        if not self.setup.packing:  # packed rows are already sized by max_seq_len
            group = [micro for idx in group for micro in split_micro(idx, self.train_set, self.setup.micro_batch_tokens)]
        batches = [collate(self.train_set, idx, self.pad_id, self.setup.packing) for idx in group]
        n_labels = max(1, sum(b.n_label_tokens for b in batches))
        total = 0.0
        self.module.train()
        for k, batch in enumerate(batches):
            sync = nullcontext() if k == len(batches) - 1 else self.acc.no_sync(self.module)
            with sync, self.acc.autocast():
                loss = self.module(labels=batch.labels.to(self.acc.device),
                                   **{k2: v.to(self.acc.device) for k2, v in batch.model_inputs().items()}) / n_labels
            if not torch.isfinite(loss):
                self._non_finite(loss)
            self.acc.backward(loss)
            total += loss.item()
        self.acc.clip_grad_norm_(self.module.parameters(), 1.0)
        lr = self.scheduler.get_last_lr()[0]  # the rate this step used
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._record(total, lr, batches, time.perf_counter() - began, bar)

    def _record(self, loss: float, lr: float, batches, seconds: float, bar) -> None:
        s = self.state
        s["step"] += 1
        tokens = sum(b.n_tokens for b in batches)
        if self.acc.num_processes > 1:  # every rank's real tokens, not rank 0's times the world size
            tokens = int(self.acc.reduce(torch.tensor(tokens, device=self.acc.device), reduction="sum"))
        s["tokens"] += tokens
        s["seconds"] += seconds
        row = {"step": s["step"], "epoch": round(s["epoch"] + s["batch"] / max(1, self.steps_per_epoch * self.recipe.train.grad_accum), 3),
               "loss": round(loss, 5), "lr": lr, "tokens": s["tokens"],
               "tokens_per_s": round(tokens / max(seconds, 1e-9), 1)}
        self._log_metrics(row)
        if s["step"] == 1 and self.setup.compile:  # the compiled graphs now sit in the cache
            from afinar.training.compiled import mark_warm

            mark_warm(self.peft_model)
        bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{s['tokens'] / max(s['seconds'], 1e-9):.0f}")
        bar.update(1)

    def _after_step(self, stop, end_of_epoch: bool) -> bool:
        """Eval/checkpoint when due; returns True when the loop must end."""
        t, step = self.recipe.train, self.state["step"]
        last = step >= self.total_steps
        if self.eval_set and (last or (t.eval_every and step % t.eval_every == 0) or (not t.eval_every and end_of_epoch)):
            self._evaluate()
        if (t.save_every and step % t.save_every == 0) or (not t.save_every and end_of_epoch) or stop.signal:
            self._checkpoint()
        if stop.signal:
            raise TrainingInterrupted(f"stopped by signal {stop.signal} at step {step}/{self.total_steps}; "
                                      f"checkpoint saved. Continue with: {resume_command(self.recipe)}")
        return last

    def _evaluate(self) -> None:
        loss = self._eval(base=False)
        s = self.state
        self._log_metrics({"step": s["step"], "eval_loss": round(loss, 5)})
        self.log(f"\nstep {s['step']}: eval loss {loss:.4f}" + (f" (base {s['base_eval_loss']:.4f})" if s["base_eval_loss"] else ""))
        if s["best_eval_loss"] is None or loss < s["best_eval_loss"]:
            s["best_eval_loss"], s["best_step"] = loss, s["step"]
            if self.acc.is_main_process:
                self._save_adapter(self.run_dir / "adapter")

    def _eval(self, base: bool) -> float:
        model = self.acc.unwrap_model(self.module)
        ctx = self.peft_model.disable_adapter() if base else nullcontext()
        with ctx, self.acc.autocast():
            return eval_loss(model, self.eval_set, self.pad_id, self.recipe.train.batch_size, self.acc.device)

    def _checkpoint(self) -> None:
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            save_checkpoint(self.run_dir, self.state["step"], self.peft_model, self.optimizer, self.scheduler, self.state)
            self._status(complete=False)
        self.acc.wait_for_everyone()

    def _status(self, complete: bool) -> None:
        if self.acc.is_main_process:
            from afinar.training.runtime import write_status

            write_status(self.run_dir, self.recipe, self.state["step"], self.total_steps, complete)

    def _resume(self) -> None:
        ckpt = latest_checkpoint(self.run_dir)
        if ckpt is None:
            raise AfinarError(f"--resume: no complete checkpoint in {self.run_dir / 'checkpoints'}; start without --resume")
        self.state.update(load_checkpoint(ckpt, self.peft_model, self.optimizer, self.scheduler))
        metrics_path = self.run_dir / "metrics.jsonl"
        if metrics_path.exists():  # keep the curve up to the checkpoint, drop what came after it
            rows = [json.loads(ln) for ln in metrics_path.read_text().splitlines() if ln.strip()]
            self.metrics = [r for r in rows if r["step"] <= self.state["step"]]
            if self.acc.is_main_process:
                metrics_path.write_text("".join(json.dumps(r) + "\n" for r in self.metrics))
        self.log(f"resuming from {ckpt.name} (epoch {self.state['epoch']}, batch {self.state['batch']})")

    def _non_finite(self, loss) -> None:
        last = latest_checkpoint(self.run_dir)
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint had been saved yet"
        raise AfinarError(f"the loss became {loss.item()} at step {self.state['step'] + 1}: training stopped; {kept}. "
                          "Lower train.learning_rate or use precision: fp32.")

    def _log_metrics(self, row: dict) -> None:
        self.metrics.append(row)
        if self.acc.is_main_process:
            with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")
        if self.tensorboard is not None:
            for key in ("loss", "eval_loss", "lr", "tokens_per_s"):
                if key in row:
                    self.tensorboard.add_scalar(f"train/{key}", row[key], row["step"])

    def _save_adapter(self, target: Path) -> None:
        from afinar.io import atomic_dir

        with atomic_dir(target) as tmp:
            self.peft_model.save_pretrained(tmp, safe_serialization=True)
            self.tokenizer.save_pretrained(tmp)

    def _finish(self) -> TrainResult:
        from afinar.training.runtime import write_outputs

        self.acc.wait_for_everyone()
        s = self.state
        if self.acc.is_main_process:
            if s["best_step"] is None:
                self._save_adapter(self.run_dir / "adapter")
            write_outputs(self.run_dir, self.recipe, self.metrics, s)
            if self.recipe.guard_mode != "off" or self.recipe.grounded:
                from afinar.index.store import build_run_guard

                guard = build_run_guard(self.run_dir)
                t = guard.thresholds
                grounded = f"; answers grounded on its {len(guard.records)} records" if self.recipe.grounded else ""
                self.log(f"guard: {self.recipe.guard_mode} mode, thresholds refuse {t.refuse:.3f} / strict {t.strict:.3f}"
                         f"{grounded} (saved in {self.run_dir / 'guard'})")
                if "auc" in (c := t.calibration):
                    self.log(f"guard calibrated on {c['positives']} generated paraphrases and {c['negatives']} "
                             f"negatives: AUC {c['auc']:.3f}; paraphrases refused {c['positives_refused_at_refuse']:.0%}, "
                             f"near misses refused {c.get('near_misses_refused_at_refuse', 0):.0%} (refuse mode)")
            self._status(complete=True)
        losses = [m["loss"] for m in self.metrics if "loss" in m]
        return TrainResult(self.run_dir, self.run_dir / "adapter", s["step"], s["tokens"], s["seconds"],
                           s["base_eval_loss"], s["best_eval_loss"], s["best_step"], losses[-1] if losses else None,
                           self.acc.is_main_process)


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise AfinarError("train.tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


def _scheduler(optimizer, kind: str, warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        if kind == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        if kind == "linear":
            return max(0.0, 1 - progress)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
