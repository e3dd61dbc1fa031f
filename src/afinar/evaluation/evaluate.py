"""`afinar eval`: evidence that a tuned assistant beats its base, where it does not, and whether it
stays in its domain.

Steps:
  1. load the run (base model + adapter, loaded once) and its questions: the held-out split
     (references from the data) and the probe file (`--probe`, else the recipe's `eval.probe`);
  2. line up the contestants: the run, what it is compared against (`--against`: the base model
     by default, or another run) and, optionally, an OpenAI-compatible endpoint; a grounded run
     gives every question the records its served index ranks for it (held-out records included),
     the rival gets the same records, and the run also answers without them (`ungrounded`);
  3. eval loss and perplexity of each local contestant on the held-out split;
  4. every contestant answers every question (batched generation, one progress bar);
  5. runs with a refusal are also judged as served, per guard mode: `off` (the model alone),
     `refuse` and `strict` (the run's saved guard decides first);
  6. score each reply (chrF, ROUGE-L, key facts, invented facts, refused or not) and summarise per
     question set, contestant and mode; probe questions with keys are also summarised by the split
     of the record that holds their keys (trained on, or held out);
  7. write eval.json, the PNG plots and a self-contained report.html into runs/<name>/eval/.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from afinar.errors import AfinarError
from afinar.evaluation.contestants import Endpoint, LocalModel, perplexity
from afinar.evaluation.metrics import ScoredReply, is_refusal, score_reply, summarise
from afinar.evaluation.probe import HELD_OUT, EvalItem, held_out_items, load_probe

GUARD_MODES = ("refuse", "strict")
REGRESSIONS_SHOWN = 5  # held-out questions where the tuned model scored worst against its rival
# a single answer counts as worse only this many chrF points below its rival's: re-evaluating one
# run moved single answers by 2-3.5 points (issue 18), so smaller drops are not shown as regressions
REGRESSION_MIN_DROP = 10.0


@dataclass
class Contender:
    """A contestant and, for a run with a refusal, the guard that serves it."""

    model: LocalModel | Endpoint
    guard: object | None = None  # DomainGuard
    refusal: str = ""
    answers: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def modes(self) -> tuple[str, ...]:
        return ("off", *GUARD_MODES) if self.guard is not None else ("off",)


@dataclass
class EvalResult:
    run_dir: Path
    out_dir: Path
    report: dict  # what eval.json holds

    @property
    def json_path(self) -> Path:
        return self.out_dir / "eval.json"

    @property
    def html_path(self) -> Path:
        return self.out_dir / "report.html"


def evaluate(run_dir: str | Path, probe: str | Path | None = None, against: str = "base",
             endpoint: str | None = None, endpoint_model: str | None = None, max_new_tokens: int | None = None,
             limit: int | None = None, out_dir: str | Path | None = None, progress: bool = True, log=print,
             ungrounded: bool = True) -> EvalResult:
    """Evaluate a trained run; see the module docstring. Returns where the report was written.
    `ungrounded=False` skips the grounded run's answers without records (a quicker look)."""
    from afinar.data import load_prepared
    from afinar.evaluation.report import write_report
    from afinar.assistant.generation import load_run

    if endpoint and not endpoint_model:
        raise AfinarError("--endpoint needs --model NAME (the model id the endpoint serves)")
    # 1. the run and its questions
    from afinar.models import run_incomplete

    run = load_run(run_dir)
    recipe, run_dir = run.recipe, Path(run_dir)
    stopped = run_incomplete(run_dir)
    if stopped:
        log(f"warning: {run_dir}: {stopped}; these figures are of an unfinished run")
    held_out = held_out_items(run_dir / "data" / "eval.jsonl")[:limit]
    probe_path = _probe_path(probe, recipe, log)
    probe_items = load_probe(probe_path)[:limit] if probe_path else []
    items = held_out + probe_items
    log(f"eval: {run_dir} on {len(held_out)} held-out questions" + (f" and {len(probe_items)} from {probe_path}" if probe_items else ""))
    # 2. contestants
    guard, refusal = _guard(run_dir, recipe)
    if recipe.grounded:
        from afinar.training.examples import EXAMPLE_SCHEMAS, data_schemas

        _ground(items, guard, recipe, examples=bool(data_schemas(recipe, run_dir / "data") & set(EXAMPLE_SCHEMAS)))
        _sides(probe_items, run_dir)
    tuned = Contender(LocalModel("tuned", f"{recipe.name} (LoRA adapter)", run.model, run.tokenizer, recipe, "default",
                                 recipe.grounded), guard if recipe.refusal else None, refusal)
    contenders = [tuned] + ([] if against == "none" else [_rival(run, against)])
    if recipe.grounded and ungrounded:
        contenders.append(Contender(LocalModel("ungrounded", f"{recipe.name} (LoRA adapter, no records in the prompt)",
                                               run.model, run.tokenizer, recipe, "default"), tuned.guard, refusal))
    if endpoint:
        contenders.append(Contender(Endpoint(endpoint, endpoint_model, recipe.system_prompt)))
    _unique_names(contenders)
    # 3. loss on the held-out split
    examples = load_prepared(run_dir / "data" / "eval.jsonl")[:limit]
    log(f"eval loss of {', '.join(c.model.name for c in contenders if isinstance(c.model, LocalModel))} "
        f"on {len(examples)} held-out conversations ...")
    contexts = [it.context for it in held_out]
    losses = {c.model.name: c.model.eval_loss(examples, recipe.eval.batch_size, contexts) for c in contenders}
    # 4. answers
    _answer_all(contenders, [held_out, probe_items], max_new_tokens or recipe.eval.max_new_tokens, recipe.eval.batch_size, progress)
    # 5-6. replies per mode, scored and summarised
    replies = {(c.model.name, mode): _replies(c, mode, items, recipe.refusal) for c in contenders for mode in c.modes}
    report = _report(run_dir, recipe, probe_path, contenders, items, replies, losses, stopped)
    # 7. files
    out = Path(out_dir) if out_dir else run_dir / "eval"
    write_report(report, out, run_dir / "metrics.jsonl")
    return EvalResult(run_dir, out, report)


def _probe_path(probe, recipe, log) -> Path | None:
    if probe:
        return Path(probe)
    if recipe.eval.probe and Path(recipe.eval.probe).exists():
        return Path(recipe.eval.probe)
    if recipe.eval.probe:
        log(f"note: the recipe's probe {recipe.eval.probe} is not here; evaluating on the held-out split only")
    return None


def _guard(run_dir: Path, recipe) -> tuple:
    """(guard, refusal) for a run that has a refusal or is grounded; the guard is the one it is served with."""
    if not recipe.refusal and not recipe.grounded:
        return None, ""
    from afinar.index.store import load_run_guard

    return load_run_guard(run_dir, threshold=recipe.guard.threshold), recipe.refusal


def _ground(items: list[EvalItem], index, recipe, examples: bool = False) -> None:
    """Give each question the records the served index ranks for it (as the engine does).

    Where the records are worked examples rather than knowledge (`examples`: instructions, user
    stories), a held-out item's own record is left out of its context: served, it would hand the
    model its reference answer to copy (measured: chrF 77-89 on instructions), and the split is
    there to show what the model makes of a request it has not seen, helped by the most similar
    other examples."""
    from afinar.index.grounding import pairs, select
    from afinar.index.store import answer_key

    g = recipe.grounding
    rows = index.matrix([it.question for it in items]) if items else []
    keys = [answer_key(r.answer) for r in index.records]
    for item, row in zip(items, rows):
        if examples and item.origin == HELD_OUT and item.reference:
            own = answer_key(item.reference)
            row = np.where([k == own for k in keys], -np.inf, row)
        item.context = pairs(index.records, select(row, g.k, g.margin))


def _sides(items: list[EvalItem], run_dir: Path) -> None:
    """For probe questions with keys: was the record holding all of them trained on, or held out?"""
    from afinar.data import load_prepared
    from afinar.evaluation.metrics import has_keys

    held = [ex.last_answer() for ex in load_prepared(run_dir / "data" / "eval.jsonl") if ex.kind != "negative"]
    for item in items:
        if item.keys:
            item.side = "held-out" if any(has_keys(answer, item.keys) for answer in held) else "trained"


def _rival(run, against: str) -> Contender:
    """The base model (adapter disabled), or another run's adapter on the same base model."""
    if against == "base":
        grounded = run.recipe.grounded
        label = f"{run.recipe.base_model} (no adapter{', the same records' if grounded else ''})"
        return Contender(LocalModel("base", label, run.model, run.tokenizer, run.recipe, None, grounded))
    from afinar.models import ADAPTER_FOR_INFERENCE, read_run

    other_dir = Path(against)
    recipe, tokenizer, adapter = read_run(other_dir)
    if recipe.base_model != run.recipe.base_model:
        raise AfinarError(f"--against {against}: trained on {recipe.base_model!r}, but {run.run_dir} on "
                          f"{run.recipe.base_model!r}; compare runs of one base model (or use --endpoint for another model)")
    run.model.load_adapter(str(adapter), adapter_name="against", **ADAPTER_FOR_INFERENCE)
    model = LocalModel(recipe.name, f"{recipe.name} (LoRA adapter, {other_dir})", run.model, tokenizer, recipe, "against",
                       recipe.grounded and run.recipe.grounded)
    return Contender(model, *_guard(other_dir, recipe))


def _unique_names(contenders: list[Contender]) -> None:
    names = [c.model.name for c in contenders]
    if len(set(names)) != len(names):
        raise AfinarError(f"two contestants are both called {max(names, key=names.count)!r}; "
                          "name the endpoint's model or the other run differently")


def _answer_all(contenders: list[Contender], sets: list[list[EvalItem]], max_new_tokens: int, batch_size: int, progress: bool) -> None:
    """Each contestant answers each set in turn; the sets are batched apart, so the held-out
    figures do not depend on the probe (padding in a batch moves bf16 logits a little)."""
    from tqdm.auto import tqdm

    total = sum(map(len, sets)) * len(contenders)
    with tqdm(total=total, desc="answering", unit="answer", disable=not progress) as bar:
        for c in contenders:
            bar.set_postfix_str(c.model.name)
            start = time.perf_counter()
            c.answers = [text for items in sets for text in c.model.answers(items, max_new_tokens, batch_size, bar)]
            c.seconds = time.perf_counter() - start


def _replies(c: Contender, mode: str, items: list[EvalItem], refusal: str) -> list[ScoredReply]:
    """Each item's reply as served in `mode` (the guard decides first; a grounded answer that
    invents a fact is replaced by its best record's answer when the recipe says so), scored."""
    from afinar.assistant.faithfulness import check

    grounded = isinstance(c.model, LocalModel) and c.model.grounded
    curated = grounded and c.model.recipe.grounding.replaces_unfaithful
    out = []
    for item, text in zip(items, c.answers):
        decision = c.guard.check(item.question, mode) if mode != "off" else None
        if decision is not None and not decision.in_domain:
            out.append(score_reply(item, c.refusal, True))
            continue
        if mode == "strict":
            out.append(score_reply(item, decision.record.answer, False))
            continue
        refused = is_refusal(text, c.refusal or refusal)
        verdict = check(text, item.context, item.question) if grounded and item.context and not refused else None
        served = item.context[0][1] if verdict and not verdict.faithful and curated else text
        out.append(score_reply(item, served, refused, verdict, text if served is not text else None))
    return out


def _report(run_dir, recipe, probe_path, contenders, items, replies, losses, stopped) -> dict:
    sets = {"held_out": [i for i, it in enumerate(items) if it.origin == HELD_OUT],
            "probe": [i for i, it in enumerate(items) if it.origin != HELD_OUT],
            "probe_trained": [i for i, it in enumerate(items) if it.side == "trained"],
            "probe_held_out": [i for i, it in enumerate(items) if it.side == "held-out"]}
    summary = {
        name: {f"{c.model.name}/{mode}": summarise([items[i] for i in idx], [replies[c.model.name, mode][i] for i in idx])
               for c in contenders for mode in c.modes}
        for name, idx in sets.items() if idx
    }
    return {
        "run": str(run_dir), "name": recipe.name, "base_model": recipe.base_model, "guard_mode": recipe.guard_mode,
        "grounded": recipe.grounded, "incomplete": stopped,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "probe": str(probe_path) if probe_path else None,
        "contestants": [{"name": c.model.name, "label": c.model.label, "modes": list(c.modes),
                         "answer_seconds": round(c.seconds, 1)} for c in contenders],
        "loss": {name: {"eval_loss": None if v is None else round(v, 4), "perplexity": perplexity(v)} for name, v in losses.items()},
        "summary": summary,
        "regressions": _regressions(items, replies, contenders),
        "significance": _significance(items, replies, contenders),
        "items": [it.to_dict() | {"replies": {f"{name}/{mode}": r[i].to_dict() for (name, mode), r in replies.items()}}
                  for i, it in enumerate(items)],
    }


def _significance(items, replies, contenders) -> dict:
    """chrF of tuned vs its rival on the held-out answers, tested by paired bootstrap."""
    from afinar.evaluation.metrics import paired_chrf

    rival = next((c.model.name for c in contenders[1:] if c.model.name != "ungrounded"), None)
    idx = [i for i, it in enumerate(items) if it.origin == HELD_OUT and it.reference]
    if rival is None or len(idx) < 2:
        return {}
    text = lambda name: [replies[name, "off"][i].text for i in idx]  # noqa: E731
    return {"chrf": {"rival_name": rival, **paired_chrf(text(rival), text("tuned"), [items[i].reference for i in idx])}}


def _regressions(items, replies, contenders) -> list[dict]:
    """Held-out questions where the tuned model's answer scored at least REGRESSION_MIN_DROP chrF
    below its rival's."""
    if len(contenders) < 2 or isinstance(contenders[1].model, LocalModel) and contenders[1].model.name == "ungrounded":
        return []  # no rival (`--against none`)
    tuned, rival = replies["tuned", "off"], replies[contenders[1].model.name, "off"]
    rows = [{"question": it.question, "tuned_chrf": round(t.chrf, 2), "rival_chrf": round(r.chrf, 2),
             "delta": round(t.chrf - r.chrf, 2)}
            for it, t, r in zip(items, tuned, rival)
            if it.origin == HELD_OUT and t.chrf is not None and t.chrf <= r.chrf - REGRESSION_MIN_DROP]
    return sorted(rows, key=lambda row: row["delta"])[:REGRESSIONS_SHOWN]
