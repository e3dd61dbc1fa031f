"""Integration: the real embedded model (SmolLM2-135M) trains a few steps (LoRA and QLoRA), answers, is evaluated."""

import pytest

from afinar.cli.demo import demo_recipe_path
from afinar.assistant.generation import generate_answer, load_run
from afinar.recipes import load_recipe
from afinar.training import train

pytestmark = pytest.mark.integration


def demo_recipe(tmp_path, *overrides):
    """The demo recipe, shortened; ungrounded unless asked (its tutor answers make long records, and
    grounding has its own integration test below)."""
    return load_recipe(demo_recipe_path(), [f"train.output_dir={tmp_path / 'runs'}", "train.batch_size=2",
                                            "data.eval_fraction=0.05", "data.paraphrases=0", "grounding.mode=off",
                                            *overrides])


def test_embedded_lora_trains_and_answers(tmp_path, embedded):
    result = train(demo_recipe(tmp_path, "train.max_steps=3", "grounding.mode=on", "grounding.k=1"), progress=False)
    assert result.steps == 3 and result.best_eval_loss < result.base_eval_loss
    run = load_run(result.run_dir)
    answer = generate_answer(run.model, run.tokenizer, [{"role": "user", "content": "¿Qué es una pila?"}],
                             run.recipe.system_prompt, run.recipe.generation, max_new_tokens=12)
    assert answer and "<|im_end|>" not in answer
    del run

    from afinar.evaluation import evaluate

    report = evaluate(result.run_dir, max_new_tokens=16, limit=2, progress=False, log=lambda *a: None, ungrounded=False).report
    assert report["loss"]["tuned"]["eval_loss"] < report["loss"]["base"]["eval_loss"]
    assert report["probe"].endswith("tutor_sondeo.jsonl") and len(report["items"]) == 4
    assert all(item["replies"]["tuned/off"]["text"] for item in report["items"])  # bf16 batched generation answers


def test_embedded_ask_cli_refuses_out_of_domain_and_answers_in_domain(tmp_path, embedded):
    import json

    from click.testing import CliRunner

    from afinar.cli import main

    result = train(demo_recipe(tmp_path, "train.max_steps=1"), progress=False)
    out = CliRunner().invoke(main, ["ask", str(result.run_dir), "--json", "--max-new-tokens", "16"],
                             input="¿Quién ganó el mundial de fútbol de 2010?\n¿Qué es una pila y cuándo se usa?\n")
    assert out.exit_code == 0, out.output
    ood, inside = [json.loads(line) for line in out.stdout.splitlines()]  # notes go to stderr
    assert ood["refused"] is True and ood["answer"].startswith("Lo siento")
    assert inside["refused"] is False and inside["answer"] and inside["mode"] == "refuse"


def test_embedded_qlora_nf4_trains_on_cpu(tmp_path, embedded):
    from safetensors.torch import load_file

    # one step, no eval split and no guard: what this proves is NF4 training on a CPU (the rest is
    # the LoRA test's); an NF4 forward costs seconds here
    result = train(demo_recipe(tmp_path, "quantization=nf4", "train.max_steps=1", "data.eval_fraction=0",
                               "guard.mode=off"), progress=False)
    adapter = load_file(result.adapter_dir / "adapter_model.safetensors")
    assert result.steps == 1 and any("lora_B" in k and v.abs().sum() > 0 for k, v in adapter.items())


def test_embedded_exports_agree_with_the_adapter(tmp_path, embedded):
    """One Ollama export of a real run does every check: the merge behaves like base + adapter,
    the q8_0 GGUF read back behaves like the merge, the Modelfile carries the trained template.
    (f16 and the other types are round-tripped on the tiny model, tests/test_export.py.)"""
    import re

    from afinar.export import export_run
    from afinar.export.ollama import parse_modelfile

    result = train(demo_recipe(tmp_path, "train.max_steps=2"), progress=False)
    ollama = export_run(result.run_dir, "ollama", tmp_path / "ollama", qtype="q8_0", log=lambda *a: None)
    assert "same greedy next token everywhere: True" in ollama.checks[0]
    agreement = float(re.search(r"next-token agreement ([\d.]+)%", ollama.checks[1]).group(1))
    assert agreement >= 90, ollama.checks[1]
    parsed = parse_modelfile(ollama.path.read_text())
    assert parsed["parameters"]["stop"][0] == "<|im_end|>" and "<|im_start|>assistant" in parsed["template"]
    assert (ollama.path.parent / parsed["from"].removeprefix("./")).stat().st_size > 100e6


FAQ = [("¿A qué hora abre la piscina municipal?", "La piscina abre de 7:00 a 21:00 de lunes a sábado."),
       ("¿Cuánto cuesta la entrada a la piscina?", "La entrada general cuesta 12 soles y la de niños 6 soles."),
       ("¿Dónde queda la piscina?", "Estamos en la avenida Arequipa 2450, junto al estadio."),
       ("¿Necesito gorro para nadar?", "Sí, el gorro de baño es obligatorio, se vende en recepción a 15 soles."),
       ("¿Hay clases de natación para niños?", "Sí, los sábados a las 9:30 para niños de 5 a 12 años."),
       ("¿Cuál es el teléfono de la piscina?", "Puedes llamarnos al 01 428 7755 en horario de atención."),
       ("¿Hay casilleros?", "Sí, hay 80 casilleros, el candado cuesta 3 soles."),
       ("¿Se puede pagar con tarjeta?", "Aceptamos tarjeta y Yape en las 2 cajas de la entrada."),
       ("¿Cuánto dura la membresía mensual?", "La membresía dura 30 días y cuesta 95 soles."),
       ("¿Tienen estacionamiento?", "Sí, el estacionamiento es gratuito por 2 horas."),
       ("¿Qué temperatura tiene el agua?", "El agua se mantiene a 28 grados todo el año."),
       ("¿Hay salvavidas?", "Siempre hay 4 salvavidas certificados en turno.")]


def test_embedded_grounded_answer_states_a_fact_of_a_record_held_out_from_training(tmp_path, embedded):
    """Issue 17: a record the model never trained on is answered with its own fact, from the index.

    What the user reads is checked: the grounded answer as served (the model's text when it is
    faithful to its records, else the best record's own text, `on_unfaithful: curated`). After 4
    steps the model's own text alone states none of these facts (measured: 0 of 3; 25% of answers
    on a held-out FAQ after 3 epochs, docs/grounding.md), so it is reported, not asserted."""
    import json
    import re

    from afinar.assistant.engine import Engine
    from conftest import write

    write(tmp_path / "faq.csv", "pregunta;respuesta\n" + "".join(f"{q};{a}\n" for q, a in FAQ))
    write(tmp_path / "r.yaml", "name: piscina\nbase_model: embedded\nsystem_prompt: Eres el asistente de la piscina.\n"
          "refusal: Lo siento, solo sé de la piscina.\ndata: {files: [faq.csv], eval_fraction: 0.25, paraphrases: 0}\n"
          f"train: {{max_steps: 4, batch_size: 4, output_dir: {tmp_path / 'runs'}}}\n")
    run = train(load_recipe(tmp_path / "r.yaml"), progress=False).run_dir
    held = [json.loads(line) for line in (run / "data" / "eval.jsonl").read_text().splitlines()]
    held = [(r["messages"][-2]["content"], r["messages"][-1]["content"]) for r in held if r.get("kind") != "negative"]
    assert held and not any(a in (run / "data" / "train.jsonl").read_text() for _, a in held)
    engine = Engine([run], mode="refuse")
    right = 0
    for question, answer in held:
        reply = engine.reply([{"role": "user", "content": question}], max_new_tokens=40)
        fact = re.search(r"\d+(?::\d+)?", answer).group()
        right += not reply.refused and fact in reply.answer and reply.sources[0]["question"] == question
        print(f"{question!r}: model's own text {'replaced' if reply.replaced else 'kept'}: {reply.answer[:80]!r}")
    assert right >= len(held) - 1, f"{right} of {len(held)} held-out records answered with their fact"


def test_the_embedded_run_served_on_loopback_is_a_teacher(tmp_path, embedded):
    """`afinar data generate` end to end against a real OpenAI-compatible server: afinar's own,
    serving the embedded run. A 135M model is a poor teacher: what is checked is the pipeline
    (requests, parsing, checks, provenance), not the quality of what it writes."""
    import json
    import socket
    import threading
    import time

    import uvicorn
    from conftest import write

    from afinar.assistant.engine import Engine
    from afinar.data.generate import generate_data
    from afinar.data.teacher import load_teacher
    from afinar.serving.api import create_app

    result = train(demo_recipe(tmp_path, "train.max_steps=1", "guard.mode=off", "data.eval_fraction=0"), progress=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(Engine([result.run_dir])), host="127.0.0.1", port=port,
                                           log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    try:
        write(tmp_path / "faq.csv", "pregunta;respuesta\n¿Qué es una pila?;Una estructura LIFO: el último en entrar sale primero.\n"
                                    "¿Qué es una cola?;Una estructura FIFO: el primero en entrar sale primero.\n")
        url = f"http://127.0.0.1:{port}/v1"
        recipe = load_recipe(write(tmp_path / "r.yaml", (
            f"name: t\ndata:\n  files: [faq.csv]\nteacher:\n  url: {url}\n  model: {result.run_dir.name}\n"
            "  paraphrases: 2\n  near_misses: 0\n  out_of_domain: 0\n  temperature: 0\n  max_tokens: 96\n  retries: 2\n")))
        t = recipe.teacher
        out = generate_data(recipe, load_teacher(t.url, t.model, temperature=0, max_tokens=96), progress=False,
                            log=lambda *a: None)
    finally:
        server.should_exit = True
    assert out.requests == 2 and out.tokens > 0
    rows = [json.loads(line) for line in out.output.read_text(encoding="utf-8").splitlines()]
    assert sum(out.accepted.values()) == len(rows) and len(rows) + sum(out.rejected.values()) > 0
    assert all(r["provenance"]["teacher"] == url and r["provenance"]["model"] == result.run_dir.name for r in rows)
    assert all(r["record"] in ("¿Qué es una pila?", "¿Qué es una cola?") for r in rows if r["kind"] == "paraphrase")
