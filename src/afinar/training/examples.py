"""The examples a run trains and evaluates on: prepared data encoded with the chat template.

`load_examples` prepares runs/<name>/data (unless it is reused), decides whether the run is
grounded (`grounding.mode: auto` by the detected schema), saves the resolved recipe next to it
and encodes every example with `encode_chat`, the function inference renders prompts with, so
the model trains on exactly the tokens it will be served. Grounded runs give each training
question the records the index ranks for it (index/grounding.py: `training_contexts`, over the
training records only) and each held-out question the records the served index would give it.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

from afinar.chat_template import encode_chat, with_context, with_system
from afinar.io import atomic_write_text
from afinar.recipes import Recipe

TYPED_SHARE = 0.5  # training questions shown as users type them (grounded runs)


def load_examples(recipe: Recipe, run_dir: Path, accelerator, reuse: bool, log):
    """(tokenizer, train set, eval set): the run's prepared data (prepared now unless `reuse`),
    encoded with the one chat-template function; the resolved recipe is saved first."""
    from afinar.data import load_prepared, prepare_data
    from afinar.models import load_tokenizer

    tokenizer = load_tokenizer(recipe.base_model, recipe.trust_remote_code, recipe.chat_template)
    data_dir = run_dir / "data"
    if accelerator.is_main_process and not (reuse and (data_dir / "train.jsonl").exists()):
        prepared = prepare_data(recipe, data_dir, tokenizer, recipe.base_model)
        log(f"data: {prepared.summary()}")
    decide_grounding(recipe, data_dir)
    if accelerator.is_main_process:  # written first, so even an interrupted run can be reproduced
        atomic_write_text(run_dir / "recipe.yaml", recipe.to_yaml())
    accelerator.wait_for_everyone()
    train_ex, eval_ex = load_prepared(data_dir / "train.jsonl"), load_prepared(data_dir / "eval.jsonl")
    if recipe.grounded:
        train_msgs, eval_msgs = grounded_conversations(recipe, train_ex, eval_ex, log)
    else:
        train_msgs, eval_msgs = ([with_system(ex.messages, recipe.system_prompt) for ex in exs] for exs in (train_ex, eval_ex))
    train_set = [e for e in (encode_chat(tokenizer, m) for m in train_msgs) if e.n_label_tokens]
    eval_set = [e for e in (encode_chat(tokenizer, m) for m in eval_msgs) if e.n_label_tokens]
    return tokenizer, train_set, eval_set


KNOWLEDGE_SCHEMAS = ("qa", "messages")  # records that carry facts
EXAMPLE_SCHEMAS = ("alpaca", "user_story")  # records that are worked examples (a request and its output)


def data_schemas(recipe: Recipe, data_dir: Path) -> set[str]:
    """The schemas `data prepare` detected in the run's files (the recipe's own where none is recorded)."""
    report = data_dir / "prepare_report.json"
    files = json.loads(report.read_text(encoding="utf-8"))["check"]["files"] if report.exists() else []
    return {f.get("schema") for f in files} or {recipe.data.schema_}


def decide_grounding(recipe: Recipe, data_dir: Path) -> None:
    """Resolve `grounding.mode: auto` from the schemas `data prepare` detected: on when every file
    holds records that carry knowledge (qa, messages), off for instructions and user stories; and
    `grounding.on_unfaithful: auto`: the best record's answer replaces an unfaithful one only
    where records carry knowledge (another example's output answers no new request)."""
    schemas = data_schemas(recipe, data_dir)
    if recipe.grounding.mode == "auto":
        recipe.grounding.mode = "on" if schemas <= set(KNOWLEDGE_SCHEMAS) else "off"
    if recipe.grounding.on_unfaithful == "auto":
        recipe.grounding.on_unfaithful = "flag" if schemas & set(EXAMPLE_SCHEMAS) else "curated"


def grounded_conversations(recipe: Recipe, train_ex, eval_ex, log=print) -> tuple[list, list]:
    """Training conversations with their RAFT-style contexts, held-out ones with the served index's."""
    from afinar.index import DomainGuard, load_embedder
    from afinar.index.grounding import pairs, select, training_contexts
    from afinar.index.store import answer_key, records_from_examples

    g, embedder = recipe.grounding, load_embedder()
    records = records_from_examples(train_ex, recipe.refusal)
    index_of = {answer_key(r.answer): i for i, r in enumerate(records)}
    gold = [None if ex.kind == "negative" else index_of.get(answer_key(ex.last_answer())) for ex in train_ex]
    contexts = training_contexts(DomainGuard(records, embedder), [ex.first_user() for ex in train_ex], gold, g.k,
                                 g.distractor_only, recipe.refusal, recipe.data.seed, g.negatives_with_records)
    rng = random.Random(recipe.data.seed)
    train = [with_context(_typed(_answered(ex.messages, c.answer), rng), recipe.system_prompt, pairs(records, c.records))
             for ex, c in zip(train_ex, contexts)]
    served = records_from_examples(train_ex + eval_ex, recipe.refusal)
    rows = DomainGuard(served, embedder).matrix([ex.first_user() for ex in eval_ex]) if eval_ex else []
    bare = lambda ex: ex.kind == "negative" and not g.negatives_with_records  # laid out as in training
    held = [with_context(ex.messages, recipe.system_prompt, None if bare(ex) else pairs(served, select(row, g.k, g.margin)))
            for ex, row in zip(eval_ex, rows)]
    sizes = [len(c.records) for c in contexts]
    log(f"grounding: each question trained with the records its ranking gives ({min(sizes, default=0)}-"
        f"{max(sizes, default=0)}, {sum(c.answer is not None for c in contexts)} with other records only, taught to refuse)")
    return train, held


def _typed(messages: list[dict], rng: random.Random) -> list[dict]:
    """`messages` with the first question as a user might type it, TYPED_SHARE of the time
    (data/augment.py: `typed_variant`): the model learns to use its record whatever the wording."""
    from afinar.data.augment import typed_variant

    if rng.random() >= TYPED_SHARE:
        return messages
    first = next(i for i, m in enumerate(messages) if m["role"] == "user")
    return [dict(m, content=typed_variant(m["content"], rng)) if i == first else m for i, m in enumerate(messages)]


def _answered(messages: list[dict], answer: str | None) -> list[dict]:
    """`messages` with the last reply replaced by `answer` (when given)."""
    if answer is None:
        return messages
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return [dict(m, content=answer) if i == last else m for i, m in enumerate(messages)]


def tokens_to_train(recipe, train_set) -> int:
    """Tokens the run will train on: its epochs over the data, or fewer when max_steps stops it."""
    t = recipe.train
    epochs = t.epochs
    if t.max_steps:
        steps_per_epoch = max(1, math.ceil(len(train_set) / (t.batch_size * t.grad_accum)))
        epochs = min(epochs, t.max_steps / steps_per_epoch)
    return int(epochs * sum(len(e.input_ids) for e in train_set))
