"""Training speed: afinar against the seeds' recipe, same model, same data, one run.

    .venv/bin/python bench/train_speed.py                  # defaults: 40 FAQ + 40 demo records, 1 epoch (~6 min on 2 cores)
    .venv/bin/python bench/train_speed.py --dataset faq    # FAQ only (~2.5 min)
    .venv/bin/python bench/train_speed.py --dataset both --examples 6 --out /tmp/smoke.json   # smoke test (~1.5 min)

Two contenders train a LoRA adapter on the embedded model (SmolLM2-135M) with the same
training examples, the same number of epochs, the same LoRA r/alpha/targets/dropout (afinar's
defaults), AdamW with the same learning rate and a cosine schedule with the same warm-up ratio:

  A. "seeds' recipe": a plain transformers + peft loop the way the seed scripts did it: every
     example rendered with the same chat template (`encode_chat`) and padded to 512 tokens,
     labels on every non-padding token (prompt included), gradient checkpointing, fp32,
     micro-batches of 2 with gradient accumulation 8;
  B. afinar: `afinar.training.train(recipe)` with its defaults on this machine.

The data is checked and split once, by afinar's own `prepare_data`, into
<tmp>/runs/<name>/data/{train,eval}.jsonl; contender A reads the same files and contender B
trains on them with `reuse_data=True`, so both see the identical training and held-out examples.

Each contender runs in its own subprocess (this file with --worker), so the peak resident
memory (`ru_maxrss`, a process-wide high-water mark) belongs to that contender alone; it is
read right after training, before the final evaluation loads anything else. After training,
each worker computes the eval loss on the answer tokens of the held-out examples the same way:
fp32 base + trained adapter, `AnswerOnlyLM` + `eval_loss`, no autocast (for B the adapter is
loaded from runs/<name>/adapter). afinar keeps the adapter with the best eval loss over its
per-epoch evaluations, so A is also evaluated after every epoch and its best is compared.
For B the JSON also has the eval loss with the base in afinar's training dtype (how `afinar
chat` serves it) and afinar's own (autocast) eval losses.

Times reported per contender (per epoch):
  - s / epoch: wall time of the training loop; for afinar its epoch loop minus the time spent in
    its own evaluations (checkpoint and adapter saving stay counted). The speed-up uses this;
  - CPU s / epoch: the same span in process CPU time (all threads), less sensitive to other
    processes competing for the CPUs;
  - steps only: time inside optimizer steps (for afinar ~ TrainResult.seconds);
  - for afinar, the whole `train()` call minus model loading and evaluations is in the JSON.
Useful tokens/s counts non-padding tokens only. "other load" is the share of the machine's CPU
capacity that other processes used while a contender ran (from /proc/stat): when it is high the
wall-time figures are not trustworthy and the run should be repeated.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import random
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEMO_FILE = ROOT / "src" / "afinar" / "resources" / "demo" / "tutor_algoritmos.jsonl"
DEFAULT_OUT = HERE / "results" / "train_speed.json"

SEEDS_PAD_TO = 512
SEEDS_MICRO_BATCH = 2
SEEDS_GRAD_ACCUM = 8
TARGET_SPEEDUP = 10.0
TARGET_PEAK_MB = 3 * 1024


# --------------------------------------------------------------------------------------------
# data


def faq_rows(n: int, seed: int = 7) -> list[dict[str, str]]:
    """`n` short Spanish FAQ pairs about a fictional banking training centre (deterministic)."""
    centro = "el Centro de Formación Bancaria Altamira"
    programas = [
        # nombre, precio (EUR), horas, horario, modalidad, inicio, requisito
        ("Analista de Riesgos de Crédito", 1450, 120, "martes y jueves de 18:00 a 21:00", "presencial", "el 3 de febrero", "un grado en economía o dos años de experiencia en banca"),
        ("Asesor Financiero Certificado", 1890, 150, "lunes y miércoles de 18:30 a 21:30", "híbrida", "el 10 de febrero", "haber superado el curso de Fundamentos de Banca"),
        ("Fundamentos de Banca", 390, 40, "sábados de 9:00 a 13:00", "en línea", "el 1 de marzo", "ninguno; está pensado para quien empieza"),
        ("Cumplimiento Normativo y Prevención de Blanqueo", 1200, 90, "viernes de 16:00 a 20:00", "presencial", "el 14 de marzo", "trabajar o haber trabajado en una entidad financiera"),
        ("Banca Digital y Medios de Pago", 980, 70, "martes de 18:00 a 21:00", "en línea", "el 7 de abril", "conocimientos básicos de hoja de cálculo"),
        ("Gestión de Patrimonios", 2300, 180, "jueves y viernes de 17:00 a 20:00", "presencial", "el 5 de mayo", "la certificación de Asesor Financiero o experiencia equivalente"),
        ("Análisis de Estados Financieros", 760, 60, "lunes de 18:00 a 21:00", "híbrida", "el 12 de mayo", "nociones de contabilidad"),
        ("Atención al Cliente en Oficina Bancaria", 320, 30, "miércoles de 10:00 a 13:00", "presencial", "el 2 de junio", "ninguno"),
        ("Seguros y Productos de Previsión", 690, 50, "sábados de 10:00 a 14:00", "en línea", "el 16 de junio", "ninguno, aunque se recomienda el curso de Fundamentos"),
        ("Finanzas Sostenibles", 840, 60, "martes y jueves de 19:00 a 21:00", "en línea", "el 8 de septiembre", "conocimientos básicos de inversión"),
        ("Ciberseguridad para Entidades Financieras", 1100, 80, "lunes y miércoles de 17:00 a 19:30", "híbrida", "el 22 de septiembre", "experiencia con herramientas informáticas de oficina"),
        ("Mercados de Capitales", 1650, 110, "viernes de 15:00 a 20:00", "presencial", "el 6 de octubre", "el curso de Análisis de Estados Financieros"),
        ("Hipotecas y Financiación Inmobiliaria", 540, 45, "martes de 10:00 a 13:00", "presencial", "el 20 de octubre", "ninguno"),
        ("Dirección de Sucursal", 2100, 160, "jueves de 16:00 a 21:00", "híbrida", "el 3 de noviembre", "tres años de experiencia en una oficina bancaria"),
    ]
    talleres = [
        # nombre, fecha, precio (EUR), plazas
        ("Excel para banca", "el 18 de febrero", 60, 20),
        ("Cómo leer una nómina y un recibo de préstamo", "el 4 de marzo", 0, 40),
        ("Negociación con clientes", "el 25 de marzo", 75, 16),
        ("Introducción a las criptomonedas", "el 15 de abril", 45, 30),
        ("Oratoria para asesores", "el 6 de mayo", 70, 18),
        ("Fraude con tarjetas: casos reales", "el 27 de mayo", 50, 25),
        ("Planificación de la jubilación", "el 17 de junio", 40, 35),
        ("Power BI para informes de riesgos", "el 30 de septiembre", 90, 15),
        ("Entrevistas de trabajo en banca", "el 21 de octubre", 0, 50),
        ("Educación financiera para jóvenes", "el 11 de noviembre", 0, 60),
    ]
    pairs: list[tuple[str, str]] = []
    for nombre, precio, horas, horario, modalidad, inicio, requisito in programas:
        pairs += [
            (f"¿Cuánto cuesta el programa de {nombre}?",
             f"La matrícula del programa de {nombre} cuesta {precio} euros y puede pagarse en tres plazos sin intereses."),
            (f"¿Cuántas horas dura {nombre}?",
             f"El programa de {nombre} tiene {horas} horas lectivas, repartidas en {max(1, horas // 10)} semanas."),
            (f"¿Qué horario tiene el curso de {nombre}?",
             f"Las clases de {nombre} son los {horario}."),
            (f"¿El programa de {nombre} es presencial o en línea?",
             f"El programa de {nombre} se imparte en modalidad {modalidad}."),
            (f"¿Cuándo empieza {nombre}?",
             f"La próxima edición de {nombre} empieza {inicio}; la inscripción cierra una semana antes."),
            (f"¿Qué requisitos hay para entrar en {nombre}?",
             f"Para {nombre} se pide {requisito}."),
            (f"¿Dan certificado al terminar {nombre}?",
             f"Sí: quien asiste al 80 % de las clases de {nombre} y aprueba el caso final recibe un certificado de {horas} horas."),
        ]
    for nombre, fecha, precio, plazas in talleres:
        coste = "es gratuito" if precio == 0 else f"cuesta {precio} euros"
        pairs += [
            (f"¿Cuándo es el taller de {nombre}?",
             f"El taller de {nombre} es {fecha}, de 17:00 a 20:00, en el aula 2."),
            (f"¿Cuánto cuesta el taller de {nombre}?",
             f"El taller de {nombre} {coste}; el alumnado de los programas tiene un 50 % de descuento."),
            (f"¿Cuántas plazas quedan en el taller de {nombre}?",
             f"El taller de {nombre} admite {plazas} personas; las plazas se asignan por orden de inscripción."),
            (f"¿Hace falta experiencia para el taller de {nombre}?",
             f"No, el taller de {nombre} es introductorio; basta con traer un portátil."),
        ]
    pairs += [
        ("¿Dónde está el centro?", f"{centro[0].upper() + centro[1:]} está en la calle Mayor 14, a cinco minutos de la estación de metro Sol."),
        ("¿Cómo me inscribo?", "La inscripción se hace en la web del centro o en secretaría, con el DNI y el justificante de pago."),
        ("¿Qué formas de pago aceptan?", "Aceptamos tarjeta, transferencia y domiciliación; las empresas pueden pagar con factura."),
        ("¿Hay becas?", "Sí, cada año hay 20 becas que cubren el 60 % de la matrícula para personas en desempleo."),
        ("¿Puedo bonificar el curso con mi empresa?", "Sí, los programas pueden bonificarse con los créditos de formación de la empresa."),
        ("¿Cuál es el horario de secretaría?", "La secretaría abre de lunes a viernes de 9:00 a 14:00 y de 16:00 a 19:00."),
        ("¿Se puede anular la matrícula?", "Puede anularse hasta siete días antes del inicio con devolución íntegra; después se devuelve el 50 %."),
        ("¿Tienen aparcamiento?", "No hay aparcamiento propio, pero el parking público de la plaza Mayor hace un 20 % de descuento al alumnado."),
        ("¿Las clases se graban?", "Las clases en línea e híbridas se graban y quedan disponibles durante treinta días."),
        ("¿Hay bolsa de empleo?", "Sí, el centro tiene una bolsa de empleo con más de cuarenta entidades colaboradoras."),
    ]
    random.Random(seed).shuffle(pairs)
    if n > len(pairs):
        raise SystemExit(f"--examples {n}: the FAQ generator makes at most {len(pairs)} distinct pairs")
    return [{"pregunta": q, "respuesta": a} for q, a in pairs[:n]]


def demo_rows(n: int) -> list[dict[str, str]]:
    rows = [json.loads(line) for line in DEMO_FILE.read_text(encoding="utf-8").splitlines() if line.strip()]
    if n > len(rows):
        raise SystemExit(f"--examples {n}: {DEMO_FILE.name} has {len(rows)} records")
    return [{"pregunta": r["pregunta"], "respuesta": r["respuesta"]} for r in rows[:n]]


def recipe_dict(name: str, data_file: Path, output_dir: Path, args) -> dict:
    """The recipe both contenders share (afinar's defaults apart from the bench settings)."""
    return {
        "name": name,
        "base_model": "embedded",
        "data": {"files": [str(data_file)], "eval_fraction": args.eval_fraction, "paraphrases": 0,
                 "negatives": 0, "min_examples": 4, "seed": args.seed},
        "train": {"epochs": args.epochs, "learning_rate": args.lr, "seed": args.seed, "output_dir": str(output_dir)},
    }


def encode_rows(tokenizer, recipe, path: Path):
    from afinar.chat_template import encode_chat, with_system
    from afinar.data import load_prepared

    return [encode_chat(tokenizer, with_system(ex.messages, recipe.system_prompt)) for ex in load_prepared(path)]


# --------------------------------------------------------------------------------------------
# workers (each in its own process)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


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


def answer_eval_loss(model, eval_set, pad_id: int) -> float:
    """Mean cross-entropy per answer token on the held-out set, no autocast."""
    from afinar.training.loss import AnswerOnlyLM, eval_loss

    return eval_loss(AnswerOnlyLM(model), eval_set, pad_id, 8, "cpu")


def worker_seeds(recipe, data_dir: Path) -> dict:
    """Contender A: the seeds' loop (pad to 512, loss on every token, checkpointing, fp32, 2x8)."""
    import torch
    from transformers import get_cosine_schedule_with_warmup

    from afinar.models import load_tokenizer
    from afinar.training.lora import attach_lora, load_base

    t = recipe.train
    tokenizer = load_tokenizer(recipe.base_model, recipe.trust_remote_code, recipe.chat_template)
    train_set = encode_rows(tokenizer, recipe, data_dir / "train.jsonl")
    eval_set = encode_rows(tokenizer, recipe, data_dir / "eval.jsonl")
    pad = tokenizer.pad_token_id
    n = len(train_set)
    ids = torch.full((n, SEEDS_PAD_TO), pad, dtype=torch.long)
    mask = torch.zeros((n, SEEDS_PAD_TO), dtype=torch.long)
    for i, e in enumerate(train_set):
        k = min(len(e.input_ids), SEEDS_PAD_TO)  # the seeds truncated at 512
        ids[i, :k] = torch.tensor(e.input_ids[:k])
        mask[i, :k] = 1
    # every real token is a label (the prompt too); padding is found by the attention mask, not
    # by token id, because this tokenizer's pad token is its end-of-turn token <|im_end|>
    labels = ids.masked_fill(mask == 0, -100)
    truncated = sum(len(e.input_ids) > SEEDS_PAD_TO for e in train_set)

    torch.manual_seed(t.seed)
    load = Clock()
    with load:
        model = attach_lora(load_base(recipe, torch.float32, "cpu"), recipe, gradient_checkpointing=True)

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=t.learning_rate, weight_decay=t.weight_decay)
    steps_per_epoch = math.ceil(math.ceil(n / SEEDS_MICRO_BATCH) / SEEDS_GRAD_ACCUM)
    epochs = int(math.ceil(t.epochs))
    total_steps = steps_per_epoch * epochs
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(t.warmup_ratio * total_steps), total_steps)

    loop, steps = Clock(), Clock()
    eval_losses, train_losses = [], []
    for epoch in range(epochs):
        model.train()
        order = list(range(n))
        random.Random(t.seed * 1000 + epoch).shuffle(order)
        micro = [order[i : i + SEEDS_MICRO_BATCH] for i in range(0, n, SEEDS_MICRO_BATCH)]
        with loop:
            for g in range(0, len(micro), SEEDS_GRAD_ACCUM):
                began = time.perf_counter()
                with steps:
                    group = micro[g : g + SEEDS_GRAD_ACCUM]
                    total = 0.0
                    for mb in group:
                        out = model(input_ids=ids[mb], attention_mask=mask[mb], labels=labels[mb], use_cache=False)
                        (out.loss / len(group)).backward()
                        total += out.loss.item() / len(group)
                    torch.nn.utils.clip_grad_norm_(params, 1.0)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                train_losses.append(round(total, 5))
                print(f"seeds: epoch {epoch + 1} step {g // SEEDS_GRAD_ACCUM + 1}/{steps_per_epoch} loss {total:.4f} "
                      f"({time.perf_counter() - began:.1f} s)", file=sys.stderr, flush=True)
        peak = peak_rss_mb()  # training high-water mark, before any evaluation
        eval_losses.append(answer_eval_loss(model, eval_set, pad))
    return {
        "contender": "seeds",
        "setup": f"cpu, fp32, padded to {SEEDS_PAD_TO}, loss on all tokens, gradient checkpointing, "
                 f"batch {SEEDS_MICRO_BATCH} x accum {SEEDS_GRAD_ACCUM}",
        "train_examples": n, "eval_examples": len(eval_set), "epochs": epochs, "optimizer_steps": total_steps,
        "padded_tokens_per_epoch": n * SEEDS_PAD_TO, "truncated_examples": truncated,
        "model_load_s": load.wall,
        "epoch_s": loop.wall / epochs, "epoch_cpu_s": loop.cpu / epochs,
        "epoch_steps_s": steps.wall / epochs, "epoch_steps_cpu_s": steps.cpu / epochs,
        "peak_rss_mb": peak,
        "eval_loss_per_epoch": eval_losses, "eval_loss_best": min(eval_losses), "eval_loss_final": eval_losses[-1],
        "final_train_loss_all_tokens": train_losses[-1] if train_losses else None,
    }


def worker_afinar(recipe, data_dir: Path) -> dict:
    """Contender B: afinar.training.train, instrumented from outside (src/ is not modified)."""
    import torch
    from peft import PeftModel

    import afinar.training.loop as loop
    from afinar.models import load_tokenizer
    from afinar.training.lora import load_base
    from afinar.training.runtime import resolve_setup

    load, epochs_clock, steps, checkpoint = Clock(), Clock(), Clock(), Clock()
    base_eval, evals = Clock(), Clock()
    original_eval = loop._Loop._eval

    def timed_eval(self, base):
        with base_eval if base else evals:
            return original_eval(self, base)

    loop._model = load.wrap(loop._model)
    loop._Loop._epochs = epochs_clock.wrap(loop._Loop._epochs)
    loop._Loop._step = steps.wrap(loop._Loop._step)
    loop._Loop._checkpoint = checkpoint.wrap(loop._Loop._checkpoint)
    loop._Loop._eval = timed_eval

    setup = resolve_setup(recipe)
    call = Clock()
    with call:
        result = loop.train(recipe, reuse_data=True, progress=False, log=lambda *a, **k: print(*a, file=sys.stderr, **k))
    peak = peak_rss_mb()  # before the evaluations below load other copies of the base

    tokenizer = load_tokenizer(recipe.base_model, recipe.trust_remote_code, recipe.chat_template)
    train_set = encode_rows(tokenizer, recipe, data_dir / "train.jsonl")
    eval_set = encode_rows(tokenizer, recipe, data_dir / "eval.jsonl")
    pad = tokenizer.pad_token_id
    model = PeftModel.from_pretrained(load_base(recipe, torch.float32, "cpu"), str(result.adapter_dir))
    eval_loss_fp32 = answer_eval_loss(model, eval_set, pad)
    with model.disable_adapter():
        eval_loss_base = answer_eval_loss(model, eval_set, pad)
    del model
    # the adapter as `afinar chat` serves it here: base weights in the training dtype
    served = PeftModel.from_pretrained(load_base(recipe, setup.weights_dtype, "cpu"), str(result.adapter_dir))
    eval_loss_served = answer_eval_loss(served, eval_set, pad)

    epochs = int(math.ceil(recipe.train.epochs))
    # afinar evaluates the base before its epoch loop and after each epoch inside it: the
    # in-loop evaluations are not training time (checkpoint and adapter saving stay counted)
    loop_wall, loop_cpu = epochs_clock.wall - evals.wall, epochs_clock.cpu - evals.cpu
    return {
        "contender": "afinar",
        "setup": setup.describe() + f", batch {recipe.train.batch_size} x accum {recipe.train.grad_accum}",
        "train_examples": len(train_set), "eval_examples": len(eval_set), "epochs": epochs,
        "optimizer_steps": result.steps, "afinar_tokens": result.tokens,
        "model_load_s": load.wall, "train_call_s": call.wall,
        "train_call_minus_load_and_evals_s": call.wall - load.wall - base_eval.wall - evals.wall,
        "base_eval_in_train_s": base_eval.wall, "evals_in_train_s": evals.wall, "evals_in_train": evals.calls,
        "checkpoint_s": checkpoint.wall,
        "epoch_s": loop_wall / epochs, "epoch_cpu_s": loop_cpu / epochs,
        "epoch_steps_s": steps.wall / epochs, "epoch_steps_cpu_s": steps.cpu / epochs,
        "afinar_seconds": result.seconds,
        "peak_rss_mb": peak,
        "eval_loss_best": eval_loss_fp32, "eval_loss_base_model": eval_loss_base,
        "eval_loss_served_dtype": eval_loss_served, "served_dtype": str(setup.weights_dtype).replace("torch.", ""),
        "afinar_own_best_eval_loss": result.best_eval_loss, "afinar_own_base_eval_loss": result.base_eval_loss,
        "best_step": result.best_step, "final_train_loss": result.final_train_loss,
    }


def run_worker(args) -> None:
    real_stdout = sys.stdout
    sys.stdout = sys.stderr  # libraries and afinar's log print; stdout carries only the JSON
    from afinar.recipe import validate_recipe

    raw = json.loads(Path(args.recipe_json).read_text(encoding="utf-8"))
    recipe = validate_recipe(raw, "bench", Path(args.recipe_json).parent)
    data_dir = Path(recipe.train.output_dir) / recipe.name / "data"
    began = time.perf_counter()
    if args.worker == "seeds":
        out = worker_seeds(recipe, data_dir)
    else:
        out = worker_afinar(recipe, data_dir)
    out["process_s"] = time.perf_counter() - began
    out["torch_threads"] = __import__("torch").get_num_threads()
    real_stdout.write(json.dumps(out) + "\n")
    real_stdout.flush()


# --------------------------------------------------------------------------------------------
# driver


def _busy_seconds() -> float:
    """CPU seconds spent by every process on the machine so far (from /proc/stat)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return float("nan")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def run_contender(kind: str, recipe_json: Path, log_path: Path) -> dict:
    print(f"  running {kind} ...", flush=True)
    began, busy0 = time.perf_counter(), _busy_seconds()
    child0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"\n===== {kind} =====\n")
        log.flush()
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--recipe-json", str(recipe_json)],
                              stdout=subprocess.PIPE, stderr=log, text=True, cwd=str(ROOT))
    wall = time.perf_counter() - began
    child1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = (child1.ru_utime - child0.ru_utime) + (child1.ru_stime - child0.ru_stime)
    others = max(0.0, _busy_seconds() - busy0 - own)
    if proc.returncode != 0:
        tail = "".join(log_path.read_text(encoding="utf-8").splitlines(keepends=True)[-40:])
        raise SystemExit(f"{kind} worker failed (exit {proc.returncode}); last lines of {log_path}:\n{tail}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["worker_wall_s"] = wall
    # share of the machine's CPU capacity used by other processes while this worker ran
    out["other_processes_cpu_share"] = others / (wall * (os.cpu_count() or 1))
    busy = out["other_processes_cpu_share"]
    print(f"  {kind}: {out['epoch_s']:.1f} s/epoch ({out['epoch_cpu_s']:.1f} CPU s), peak {out['peak_rss_mb']:.0f} MB, "
          f"eval loss {out['eval_loss_best']:.4f}; worker {wall:.0f} s"
          + (f"; WARNING: other processes used {100 * busy:.0f}% of the CPUs meanwhile" if busy > 0.1 else ""), flush=True)
    return out


def bench_dataset(name: str, args, workdir: Path) -> dict:
    from afinar.data import prepare_data
    from afinar.models import load_tokenizer
    from afinar.recipe import validate_recipe

    rows = faq_rows(args.examples) if name == "faq" else demo_rows(args.examples)
    data_file = workdir / f"{name}.jsonl"
    data_file.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    raw = recipe_dict(f"bench-{name}", data_file, workdir / "runs", args)
    recipe = validate_recipe(json.loads(json.dumps(raw)), "bench", workdir)
    tokenizer = load_tokenizer(recipe.base_model, recipe.trust_remote_code, recipe.chat_template)
    data_dir = Path(recipe.train.output_dir) / recipe.name / "data"
    prepared = prepare_data(recipe, data_dir, tokenizer, recipe.base_model)
    train_enc = encode_rows(tokenizer, recipe, prepared.train_path)
    eval_enc = encode_rows(tokenizer, recipe, prepared.eval_path)
    lengths = [len(e.input_ids) for e in train_enc]
    print(f"{name}: {len(train_enc)} train / {len(eval_enc)} eval examples, {sum(lengths)} tokens per epoch "
          f"(mean {sum(lengths) / len(lengths):.0f}, max {max(lengths)}), {args.epochs} epoch(s)", flush=True)
    recipe_json = workdir / f"{name}.recipe.json"
    recipe_json.write_text(json.dumps(raw, ensure_ascii=False), encoding="utf-8")
    log_path = workdir / "workers.log"
    seeds = run_contender("seeds", recipe_json, log_path)
    afinar = run_contender("afinar", recipe_json, log_path)
    for r in (seeds, afinar):
        r["useful_tokens_per_epoch"] = sum(lengths)
        r["useful_tokens_per_s"] = sum(lengths) / r["epoch_s"]
        r["useful_tokens_per_s_steps"] = sum(lengths) / r["epoch_steps_s"]
    ratio = seeds["epoch_s"] / afinar["epoch_s"]
    ratio_steps = seeds["epoch_steps_s"] / afinar["epoch_steps_s"]
    ratio_cpu = seeds["epoch_cpu_s"] / afinar["epoch_cpu_s"]
    loss_ok = afinar["eval_loss_best"] <= seeds["eval_loss_best"]
    memory_ok = afinar["peak_rss_mb"] < TARGET_PEAK_MB
    return {
        "dataset": name, "examples": args.examples, "train_examples": len(train_enc), "eval_examples": len(eval_enc),
        "epochs": args.epochs, "tokens_per_epoch": sum(lengths), "mean_tokens": sum(lengths) / len(lengths),
        "max_tokens": max(lengths),
        "seeds": seeds, "afinar": afinar,
        "speedup_epoch": ratio, "speedup_steps": ratio_steps, "speedup_epoch_cpu_time": ratio_cpu,
        "eval_loss_ok": loss_ok, "memory_ok": memory_ok,
        "target_met": ratio >= TARGET_SPEEDUP and loss_ok and memory_ok,
    }


def machine_info() -> dict:
    import accelerate
    import peft
    import torch
    import transformers

    from afinar.training.runtime import cpu_supports_bf16

    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gb = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return {
        "cpu": model, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "cpu_bf16": cpu_supports_bf16(), "ram_gb": mem_gb, "gpu": torch.cuda.is_available(),
        "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
        "peft": peft.__version__, "accelerate": accelerate.__version__,
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def markdown(results: list[dict]) -> str:
    lines = [
        "| dataset | contender | s / epoch | CPU s / epoch | s / epoch, steps only | useful tok/s | peak RSS | eval loss (answers, fp32) | steps | other load |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        for key, label in (("seeds", "seeds' recipe"), ("afinar", "afinar")):
            c = r[key]
            lines.append(f"| {r['dataset']} ({r['train_examples']} train / {r['eval_examples']} eval, {r['epochs']} ep) | {label} | "
                         f"{c['epoch_s']:.1f} | {c['epoch_cpu_s']:.1f} | {c['epoch_steps_s']:.1f} | {c['useful_tokens_per_s']:.0f} | "
                         f"{c['peak_rss_mb'] / 1024:.2f} GB | {c['eval_loss_best']:.4f} | {c['optimizer_steps']} | "
                         f"{100 * c['other_processes_cpu_share']:.0f}% |")
    lines.append("")
    for r in results:
        a = r["afinar"]
        verdict = "met" if r["target_met"] else "NOT met"
        lines.append(f"- {r['dataset']}: afinar is {r['speedup_epoch']:.1f}x faster per epoch in wall time "
                     f"({r['speedup_epoch_cpu_time']:.1f}x in CPU time, {r['speedup_steps']:.1f}x counting optimizer steps only); "
                     f"eval loss {a['eval_loss_best']:.4f} vs {r['seeds']['eval_loss_best']:.4f} (base model {a['eval_loss_base_model']:.4f}); "
                     f"afinar peak {a['peak_rss_mb'] / 1024:.2f} GB. "
                     f"Target (>= {TARGET_SPEEDUP:.0f}x, eval loss <= seeds', peak < 3 GB): {verdict}.")
    lines.append("")
    lines.append("Other load: share of the machine's CPUs used by other processes while the contender ran "
                 "(wall-time figures are unreliable when it is high; CPU time is less affected).")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=["faq", "demo", "both"], default="both")
    p.add_argument("--examples", type=int, default=40, help="records per dataset before the train/eval split (default 40)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--eval-fraction", type=float, default=0.2, help="share held out for the eval loss (default 0.2)")
    p.add_argument("--lr", type=float, default=2e-4, help="learning rate of both contenders (afinar's default)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results JSON (default {DEFAULT_OUT.relative_to(ROOT)})")
    p.add_argument("--keep", action="store_true", help="keep the temporary work folder (runs, logs)")
    p.add_argument("--worker", choices=["seeds", "afinar"], help=argparse.SUPPRESS)
    p.add_argument("--recipe-json", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        run_worker(args)
        return
    command = shlex.join(["python", os.path.relpath(Path(__file__).resolve(), Path.cwd()), *sys.argv[1:]])
    workdir = Path(tempfile.mkdtemp(prefix="afinar-bench-"))
    began = time.perf_counter()
    print(f"afinar training speed bench -> {args.out} (work folder {workdir})", flush=True)
    try:
        datasets = ["faq", "demo"] if args.dataset == "both" else [args.dataset]
        results = [bench_dataset(name, args, workdir) for name in datasets]
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    table = markdown(results)
    report = {
        "command": command, "python": sys.executable, "machine": machine_info(),
        "settings": {"dataset": args.dataset, "examples": args.examples, "epochs": args.epochs,
                     "eval_fraction": args.eval_fraction, "learning_rate": args.lr, "seed": args.seed},
        "target": {"speedup_per_epoch": TARGET_SPEEDUP, "eval_loss": "afinar <= seeds'", "peak_rss_mb": TARGET_PEAK_MB},
        "results": results, "markdown": table, "bench_seconds": round(time.perf_counter() - began, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print()
    print(table)
    print(f"\n{report['bench_seconds']:.0f} s in all; results in {args.out}")


if __name__ == "__main__":
    main()
