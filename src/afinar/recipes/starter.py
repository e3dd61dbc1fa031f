"""`afinar init DATA`: write a commented starter recipe for a dataset.

The schema and column mapping are detected from the file, so the recipe validates as written;
the comments say what to change first (system prompt, refusal) and where the other knobs are.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from afinar.data.readers import read_file
from afinar.data.schemas import resolve_columns
from afinar.errors import AfinarError
from afinar.io import atomic_write_text

_TEMPLATE = """\
# afinar recipe for {data_name}: one file describes the whole assistant.
# Every field is listed with its meaning by `afinar recipe fields`; unset fields keep their defaults.
name: {name}
# 'embedded' runs on a laptop CPU; for a 7-8B model on one GPU use e.g.
#   base_model: mistralai/Mistral-7B-Instruct-v0.2   and   quantization: nf4   (QLoRA)
base_model: embedded
quantization: none

# Said to the model before every conversation, in training and when serving.
system_prompt: {system}
# What the assistant answers outside its domain (leave empty to answer everything).
refusal: {refusal}

data:
  files: [{data_file}]
  schema: {schema}          # detected: {schema}
  columns: {columns}
  eval_fraction: 0.15       # held out to measure the tuned model against its base
  paraphrases: 1            # template rewrites of each question (robustness to wording)
  negatives: 0.1            # share of out-of-domain questions answered with the refusal

lora: {{r: 16, alpha: 32, dropout: 0.0, target_modules: auto}}

train:
  epochs: 3
  learning_rate: 2.0e-4
  batch_size: 8
  max_seq_len: 1024

guard:
  mode: auto                # refuse out-of-domain questions when a refusal is set

grounding:
  mode: auto                # answer from the best-matching records, given in the prompt (qa, chat data)
  k: 3                      # at most this many records per question
"""


def write_starter_recipe(data_path: Path, output: Path | None = None, name: str | None = None, force: bool = False) -> Path:
    """Detect the dataset's schema and write a starter recipe next to it (or at `output`)."""
    raw = read_file(data_path)
    try:
        schema, columns = resolve_columns(raw.columns)
    except ValueError as exc:
        raise AfinarError(f"{data_path}: {exc}") from None
    output = output or data_path.with_name(data_path.stem + ".recipe.yaml")
    if output.exists() and not force:
        raise AfinarError(f"{output} exists; pass --force to overwrite it")
    spanish = bool(re.search(r"[áéíóúñ¿]", " ".join(str(r.data) for r in raw.records[:20])))
    system = ("Eres un asistente experto en este tema. Responde de forma breve y precisa." if spanish
              else "You are an expert assistant for this domain. Answer briefly and precisely.")
    refusal = ("Lo siento, solo puedo responder preguntas sobre este tema." if spanish
               else "Sorry, I can only answer questions about this domain.")
    data_file = os.path.relpath(data_path.resolve(), output.resolve().parent)
    text = _TEMPLATE.format(
        data_name=data_path.name, name=_slug(name or data_path.stem), system=json.dumps(system, ensure_ascii=False),
        refusal=json.dumps(refusal, ensure_ascii=False), data_file=json.dumps(data_file), schema=schema,
        columns=json.dumps(columns, ensure_ascii=False),
    )
    return atomic_write_text(output, text)


def _slug(text: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")
    return slug or "assistant"
