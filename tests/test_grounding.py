"""Grounded answers: the records in the prompt, the same tokens in training and at inference,
RAFT-style training contexts without leakage, the index rebuilt after a data edit, and the
faithfulness check."""

import json

import numpy as np
import pytest

from afinar.assistant.faithfulness import invented_facts
from afinar.chat_template import encode_chat, render_prompt, with_context
from afinar.data.schemas import Example
from afinar.index.grounding import select, training_contexts
from conftest import write

RECORDS = [("¿A qué hora abren?", "Abrimos de 8:00 a 20:00."), ("¿Cuánto cuesta el carné?", "El carné cuesta $25.")]


def test_grounded_prompt_is_the_same_tokens_in_training_and_inference(tiny_tokenizer):
    question = [{"role": "user", "content": "¿a q hora abren?"}]
    trained = encode_chat(tiny_tokenizer, with_context([*question, {"role": "assistant", "content": "De 8:00 a 20:00."}],
                                                       "Eres el asistente.", RECORDS))
    served = tiny_tokenizer(render_prompt(tiny_tokenizer, with_context(question, "Eres el asistente.", RECORDS)),
                            add_special_tokens=False)["input_ids"]
    assert trained.input_ids[: len(served)] == served
    first_label = next(i for i, t in enumerate(trained.labels) if t != -100)
    assert first_label == len(served)  # the loss starts exactly where the served prompt ends


def test_the_context_layout_is_the_documented_one():
    messages = with_context([{"role": "user", "content": "hola"}], "Eres el asistente.", RECORDS)
    assert messages[0] == {"role": "system", "content": "Eres el asistente.\n\n[1] ¿A qué hora abren?\nAbrimos de 8:00 a "
                                                         "20:00.\n\n[2] ¿Cuánto cuesta el carné?\nEl carné cuesta $25."}
    assert with_context([{"role": "user", "content": "hola"}], "S", None) == [{"role": "system", "content": "S"},
                                                                              {"role": "user", "content": "hola"}]


def test_select_gives_one_record_when_the_ranking_is_confident():
    assert select(np.array([0.70, 0.91, 0.80]), k=3, margin=0.02) == [1]
    assert select(np.array([0.90, 0.91, 0.895, 0.5]), k=3, margin=0.02) == [1, 0, 2]
    assert select(np.array([0.90, 0.91, 0.905, 0.9]), k=2, margin=0.02) == [1, 2]


class _FakeGuard:
    """Scores that rank records by how many words they share with the question."""

    def __init__(self, records):
        self.records = records

    def matrix(self, questions):
        return np.array([[len(set(q.split()) & set(r.answer.split())) + 0.0 for r in self.records] for q in questions])


def test_training_contexts_put_the_gold_record_among_distractors_and_some_without_it():
    from afinar.index.guard import Record

    records = [Record([f"q{i}"], f"respuesta {i} tema{i % 3}") for i in range(12)]
    questions = [f"tema{i % 3} pregunta {i}" for i in range(12)] * 20
    gold = list(range(12)) * 20
    contexts = training_contexts(_FakeGuard(records), questions, gold, k=3, distractor_only=0.1, refusal="No sé.", seed=1)
    with_gold = [c for c, g in zip(contexts, gold) if g in c.records]
    without = [c for c, g in zip(contexts, gold) if g not in c.records]
    assert all(c.answer == "No sé." for c in without) and all(c.answer is None for c in with_gold)
    assert 0.05 < len(without) / len(contexts) < 0.15
    assert {len(c.records) for c in contexts} == {1, 2, 3}
    multi = [c for c, g in zip(contexts, gold) if len(c.records) > 1 and g in c.records]
    firsts = sum(c.records[0] == g for c, g in zip(contexts, gold) if len(c.records) > 1 and g in c.records)
    assert 0.4 < firsts / len(multi) < 0.95  # mostly first, as the ranking puts it, not always
    refusal_example = training_contexts(_FakeGuard(records), ["tema1 algo"], [None], 3, 0.1, "No sé.", 0,
                                        negatives_with_records=True)[0]
    assert refusal_example.answer is None and refusal_example.records  # its own retrieved records
    bare = training_contexts(_FakeGuard(records), ["tema1 algo"], [None], 3, 0.1, "No sé.", 0)[0]
    assert bare.answer is None and bare.records == []  # the default: the refusal without any record


def test_no_held_out_answer_reaches_a_training_prompt(tmp_path):
    from afinar.recipes import load_recipe
    from afinar.training.examples import grounded_conversations

    train_ex = [Example([{"role": "user", "content": f"¿Horario de la sede {i}?"},
                         {"role": "assistant", "content": f"La sede {i} abre a las {i}:00."}]) for i in range(1, 9)]
    eval_ex = [Example([{"role": "user", "content": "¿Horario de la sede central?"},
                        {"role": "assistant", "content": "La sede central abre a las 7:45."}])]
    write(tmp_path / "d.jsonl", "")
    recipe = load_recipe(None, ["refusal=No lo sé.", "grounding.distractor_only=0.3", "data.files=[d.jsonl]"])
    train, held = grounded_conversations(recipe, train_ex, eval_ex, log=lambda *a: None)
    assert len(train) == 8 and not any("7:45" in m[0]["content"] for m in train)
    assert "7:45" in held[0][0]["content"]  # the served index holds the held-out record
    assert any(m[-1]["content"] == "No lo sé." for m in train)  # distractor-only examples refuse


def test_an_invented_number_is_flagged_and_the_records_facts_are_not():
    sources = ["¿Cuánto cuesta?\nEl Plan Básico cuesta $690 MXN. Escríbenos a hola@pulso.mx o ve a www.pulso.mx; "
               "abrimos de 5:30 a 23:00 en Zapopan. El router cuesta 17.990.", "cuanto cuesta el plan"]
    assert invented_facts("El Plan Básico cuesta $690 MXN y abrimos de 5:30 a 23:00 [1].", sources) == []
    assert invented_facts("Cuesta 17990, en www.pulso.mx/planes, en Zapopan.", sources) == []
    assert invented_facts("Cuesta $750 y abrimos a las 6:00 en Guadalajara; escribe a info@pulso.mx.", sources) == \
        ["info@pulso.mx", "750", "6:00", "Guadalajara"]
    assert invented_facts("Abrimos a las 18:00.", sources) == ["18:00"]  # not 8:00


def test_an_answer_that_copies_nothing_from_its_records_is_unsupported():
    from afinar.assistant.faithfulness import check

    records = [("¿Hay descuento para estudiantes?", "Sí, los estudiantes tienen 15% de descuento con credencial vigente.")]
    assert check("descuento estudiante?", records, "descuento estudiante?").faithful is False  # an echo
    assert check("Pues aceptam efectivos tarjajes de travacación.", records, "x").supported is False  # garbled
    verdict = check("Los estudiantes tienen 15% de descuento con su credencial.", records, "descuento estudiante?")
    assert verdict.faithful and verdict.copied == 7  # "los estudiantes tienen 15% de descuento con"


def faq_run(tmp_path, model_dir, *overrides):
    from afinar.recipes import load_recipe
    from afinar.training import train

    rows = [("¿A qué hora abre la biblioteca?", "Abre de 8:00 a 20:00 de lunes a viernes."),
            ("¿Cuánto cuesta el carné?", "El carné es gratis, el duplicado cuesta 5 soles."),
            ("¿Cuántos libros puedo llevar?", "Hasta 3 libros por 15 días."),
            ("¿Hay wifi?", "Sí, la red BibliotecaLibre no tiene clave."),
            ("¿Dónde queda la biblioteca?", "En la avenida Grau 455, frente al parque."),
            ("¿Puedo renovar un préstamo?", "Sí, una vez por 15 días más, en el mostrador o en línea.")]
    write(tmp_path / "faq.csv", "pregunta;respuesta\n" + "".join(f"{q};{a}\n" for q, a in rows))
    write(tmp_path / "r.yaml", f"name: biblio\nbase_model: {model_dir}\nsystem_prompt: Eres la biblioteca.\n"
          "refusal: Solo sé de la biblioteca.\ndata: {files: [faq.csv], eval_fraction: 0.2, negatives: 0.1, min_examples: 4}\n"
          "lora: {r: 4, alpha: 8}\ntrain: {batch_size: 4, max_steps: 2, precision: fp32, output_dir: runs}\n")
    return train(load_recipe(tmp_path / "r.yaml", list(overrides)), progress=False).run_dir


def test_a_record_added_after_training_is_served_after_the_index_rebuild(tmp_path, tiny_model_dir):
    from click.testing import CliRunner

    from afinar.assistant.engine import Engine
    from afinar.cli import main

    run = faq_run(tmp_path, tiny_model_dir)
    assert json.loads((run / "guard" / "guard.json").read_text())["records"]  # every record, held-out ones too
    serving = Engine([run], mode="strict")  # a server started before the edit, as `afinar serve` would be
    with (tmp_path / "faq.csv").open("a", encoding="utf-8") as fh:
        fh.write("¿Abren los domingos?;Los domingos abrimos de 10:00 a 13:00 solo en verano.\n")
    out = CliRunner().invoke(main, ["index", str(run)])
    assert out.exit_code == 0 and "1 new" in out.output and "+ ¿Abren los domingos?" in out.output
    strict = serving.reply([{"role": "user", "content": "¿abren los domingos?"}])
    assert strict.answer.startswith("Los domingos abrimos de 10:00")  # no training, no restart: the index alone
    engine = Engine([run], mode="refuse")
    reply = engine.reply([{"role": "user", "content": "¿abren los domingos?"}], max_new_tokens=6)
    assert reply.sources[0]["question"] == "¿Abren los domingos?"  # the new record is in the prompt, first


def test_an_answer_that_invents_a_fact_is_flagged_or_replaced(tmp_path, tiny_model_dir, monkeypatch):
    from afinar.assistant.engine import Engine

    run = faq_run(tmp_path, tiny_model_dir)
    engine = Engine([run], mode="refuse")
    monkeypatch.setattr(engine, "_generate", lambda *a, **k: iter(["Abre a las 9:30 en Miraflores."]))
    question = [{"role": "user", "content": "¿A qué hora abre la biblioteca?"}]
    replaced = engine.reply(question)
    assert replaced.invented == ["9:30", "Miraflores"] and replaced.replaced
    assert replaced.answer == "Abre de 8:00 a 20:00 de lunes a viernes."
    engine.persona().recipe.grounding.on_unfaithful = "flag"
    flagged = engine.reply(question)
    assert flagged.answer == "Abre a las 9:30 en Miraflores." and flagged.invented and not flagged.replaced
    monkeypatch.setattr(engine, "_generate", lambda *a, **k: iter(["¿A qué hora abre?"]))
    echoed = engine.reply(question)
    assert echoed.unsupported and not echoed.invented and not echoed.replaced  # flagged: an echo states nothing


@pytest.mark.parametrize("schema, grounded", [("qa", True), ("alpaca", False)])
def test_grounding_auto_follows_the_schema(tmp_path, schema, grounded):
    from afinar.recipes import load_recipe
    from afinar.training.examples import decide_grounding

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "prepare_report.json").write_text(json.dumps({"check": {"files": [{"schema": schema}]}}))
    write(tmp_path / "d.jsonl", "")
    recipe = load_recipe(None, ["data.files=[d.jsonl]"])
    decide_grounding(recipe, tmp_path / "data")
    assert recipe.grounded is grounded and recipe.grounding.mode == ("on" if grounded else "off")
    # an unfaithful answer is replaced by the best record's only where records are knowledge
    assert recipe.grounding.on_unfaithful == ("curated" if grounded else "flag")
    forced = load_recipe(None, ["data.files=[d.jsonl]", "grounding.mode=on", "grounding.on_unfaithful=curated"])
    decide_grounding(forced, tmp_path / "data")
    assert forced.grounded and forced.grounding.on_unfaithful == "curated"  # what the recipe says stays


def test_the_studio_reindexes_a_run_when_its_dataset_is_uploaded_again(tmp_path, tiny_model_dir):
    from fastapi.testclient import TestClient

    from afinar.assistant.engine import Engine
    from afinar.serving.api import create_app
    from afinar.serving.studio import Job, Studio

    uploads = tmp_path / "studio" / "uploads"
    run = faq_run(uploads, tiny_model_dir)  # trained on studio/uploads/faq.csv, as the studio trains
    studio = Studio(tmp_path / "studio", str(tiny_model_dir))
    studio.jobs["j"] = Job("j", "biblio", uploads / "r.yaml", run, state="done")
    engine = Engine([run], mode="strict")
    more = "".join(f"¿Abren la sala {i}?;La sala {i} abre a las {i}:00.\n" for i in range(1, 5))  # the studio checks for >= 10 rows
    edited = (uploads / "faq.csv").read_text(encoding="utf-8") + more + "¿Prestan laptops?;Sí, 10 laptops por 2 horas con tu carné.\n"
    report = TestClient(create_app(engine, studio=studio)).post(
        "/studio/datasets", files={"file": ("faq.csv", edited.encode(), "text/csv")}).json()
    assert report["ok"] and report["reindexed"] == ["biblio"]
    assert engine.reply([{"role": "user", "content": "¿prestan laptops?"}]).answer.startswith("Sí, 10 laptops")


def test_typed_variants_look_like_what_users_type():
    import random

    from afinar.data.augment import typed_variant

    rng = random.Random(3)
    question = "¿Cuánto cuesta la membresía mensual del gimnasio?"
    variants = {typed_variant(question, rng) for _ in range(40)}
    assert len(variants) > 5 and question not in variants
    assert all("¿" not in v and v == v.lower() for v in variants)
    assert any("cuanto" in v for v in variants) and any(len(v.split()) <= 4 for v in variants)  # accents dropped; key words only


@pytest.mark.parametrize("examples", [True, False])
def test_eval_leaves_a_held_out_example_out_of_its_own_context(examples):
    """Instructions and user stories: the held-out item's own record (its reference answer) is not
    handed to it, the next most similar examples are; FAQ records stay (answering from them is
    what the held-out split measures there). Probe questions keep whatever the index ranks."""
    from types import SimpleNamespace

    from afinar.evaluation.evaluate import _ground
    from afinar.evaluation.probe import EvalItem

    records = [SimpleNamespace(questions=[f"pregunta {i}"], answer=f"Respuesta {i}.") for i in range(4)]
    index = SimpleNamespace(records=records, matrix=lambda qs: np.array([[0.9, 0.5, 0.89, 0.1]] * len(qs)))
    recipe = SimpleNamespace(grounding=SimpleNamespace(k=3, margin=0.05))
    held = EvalItem([{"role": "user", "content": "pregunta 0"}], "answer", reference="respuesta  0.")
    probe = EvalItem([{"role": "user", "content": "pregunta 0"}], "answer", origin="probe.jsonl:1")
    _ground([held, probe], index, recipe, examples=examples)
    assert [q for q, _ in probe.context] == ["pregunta 0", "pregunta 2"]
    assert [q for q, _ in held.context] == (["pregunta 2"] if examples else ["pregunta 0", "pregunta 2"])
