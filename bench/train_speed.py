"""Training speed: afinar against the seeds' recipe and TRL, same model, same data, one run.

    .venv/bin/python bench/train_speed.py                       # faq, demo and alpaca, 40 records each (~10 min)
    .venv/bin/python bench/train_speed.py --dataset faq         # FAQ only (~3.5 min)
    .venv/bin/python bench/train_speed.py --dataset faq --skip seeds --out /tmp/t.json   # quick look

Three contenders train a LoRA adapter on the embedded model (SmolLM2-135M) with the same
training examples, the same number of epochs, the same LoRA r/alpha/targets/dropout (afinar's
defaults), AdamW with the same learning rate and a cosine schedule with the same warm-up:

  seeds   a plain transformers + peft loop the way the seed scripts did it: every example
          rendered with the same chat template and padded to 512 tokens, labels on every
          non-padding token (prompt included), gradient checkpointing, fp32, micro-batches of 2
          with gradient accumulation 8;
  trl     TRL's SFTTrainer with the fastest settings measured on this CPU (TRL_SETTINGS), the
          examples as conversational prompt-completion records (loss on the answers);
  afinar  `afinar.training.train(recipe)` with its defaults on this machine.

Datasets: `faq` (short Spanish FAQ pairs, the targets' case), `demo` (the demo's ~250-token
algorithm-tutor answers) and `alpaca` (Stanford Alpaca's 175 human-written seed tasks from
../shared/data, for a real length distribution; skipped when that folder is absent). The data
is checked and split once, by afinar's `prepare_data`; every contender reads the same files.

Each contender runs in its own process (this file with --worker), so the peak resident memory
(`ru_maxrss`) belongs to it alone; it is read right after training. The eval loss of every
contender is computed the same way after training: fp32 base + the trained adapter, mean
cross-entropy over the answer tokens of the held-out examples, no autocast.

Reported per contender (per epoch): wall time of the training loop (afinar's minus its own
evaluations), process CPU time, useful (non-padding) tokens/s, peak RSS, eval loss, and the
achieved GFLOP/s (4N per real token plus causal attention, see `nominal_flops`) as a share of
the bf16 matmul throughput measured on this machine at the start (bench/machine.py). "other
load" is the share of the machine's CPUs other processes used meanwhile (from /proc/stat):
when it is high, rerun.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

from machine import Clock, machine_info, matmul_peak, peak_rss_mb
from machine import run_worker as run_process

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEMO_FILE = ROOT / "src" / "afinar" / "resources" / "demo" / "tutor_algoritmos.jsonl"
ALPACA_FILE = ROOT.parent / "shared" / "data" / "alpaca_seed_tasks.jsonl"
DEFAULT_OUT = HERE / "results" / "train_speed.json"

SEEDS_PAD_TO = 512
SEEDS_MICRO_BATCH = 2
SEEDS_GRAD_ACCUM = 8
# TRL's fastest settings measured on this CPU (faq, 32 examples, one run each): bf16 autocast on a
# bf16 base, no gradient checkpointing, batches grouped by length, eager attention (9.7 s/epoch,
# against 10.2 with SDPA); TRL computes the output layer only on answer tokens since 1.x. Slower:
# packing (22.8 s, and one optimizer step instead of four), torch_compile (389 s: it compiles the
# whole model, recompiling as shapes change).
# bf16 only where the CPU computes it natively (`native_bf16`): emulated bf16 ran TRL at a fraction
# of its fp32 speed on an Intel Xeon without AVX-512 BF16 (issue 20), so fp32 is its fastest there.
TRL_SETTINGS = {"bf16": True, "gradient_checkpointing": False, "train_sampling_strategy": "group_by_length",
                "packing": False, "max_length": 1024, "attn_implementation": "eager"}
TARGET_VS_SEEDS = 12.0
TARGET_VS_TRL = 1.3
TARGET_SHARE = 0.60
LOSS_TOLERANCE = 0.005  # "equal" eval loss: within 0.5%


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


def alpaca_rows(n: int, seed: int = 7) -> list[dict[str, str]] | None:
    """`n` of Stanford Alpaca's 175 human-written seed tasks (../shared/data), or None when absent.

    Real English instructions nobody on this team wrote, with their varied lengths; each task's
    first instance gives the input and output.
    """
    if not ALPACA_FILE.exists():
        return None
    tasks = [json.loads(line) for line in ALPACA_FILE.read_text(encoding="utf-8").splitlines() if line.strip()]
    random.Random(seed).shuffle(tasks)
    if n > len(tasks):
        raise SystemExit(f"--examples {n}: {ALPACA_FILE.name} has {len(tasks)} tasks")
    return [{"instruction": t["instruction"], "input": t["instances"][0]["input"], "output": t["instances"][0]["output"]}
            for t in tasks[:n]]


def dataset_rows(name: str, n: int) -> list[dict[str, str]] | None:
    return {"faq": faq_rows, "demo": demo_rows, "alpaca": alpaca_rows}[name](n)


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


def adapter_eval_loss(recipe, adapter_dir: Path, eval_set, pad: int) -> float:
    """Eval loss (answer tokens, fp32, no autocast) of a saved adapter on the fp32 base."""
    import torch
    from peft import PeftModel

    from afinar.training.lora import load_base

    model = PeftModel.from_pretrained(load_base(recipe, torch.float32, "cpu"), str(adapter_dir))
    return answer_eval_loss(model, eval_set, pad)


def trl_rows(recipe, path: Path) -> list[dict]:
    """The prepared examples as TRL's conversational prompt-completion records (loss on the answer)."""
    from afinar.chat_template import with_system
    from afinar.data import load_prepared

    rows = []
    for ex in load_prepared(path):
        messages = with_system(ex.messages, recipe.system_prompt)
        rows.append({"prompt": messages[:-1], "completion": messages[-1:]})
    return rows


def worker_trl(recipe, data_dir: Path) -> dict:
    """Contender C: TRL's SFTTrainer with the best settings measured on this CPU (TRL_SETTINGS)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from afinar.models import load_tokenizer
    from afinar.training.lora import load_base, target_modules

    t = recipe.train
    tokenizer = load_tokenizer(recipe.base_model, recipe.trust_remote_code, recipe.chat_template)
    eval_set = encode_rows(tokenizer, recipe, data_dir / "eval.jsonl")
    train_rows = trl_rows(recipe, data_dir / "train.jsonl")
    settings = {**TRL_SETTINGS, "bf16": native_bf16(), **json.loads(os.environ.get("AFINAR_BENCH_TRL", "{}"))}  # to try other settings
    attention = settings.pop("attn_implementation", None)
    load = Clock()
    with load:
        model = load_base(recipe, torch.bfloat16 if settings["bf16"] else torch.float32, "cpu")
        if attention:
            model.set_attn_implementation(attention)
    lora = LoraConfig(r=recipe.lora.r, lora_alpha=recipe.lora.alpha, lora_dropout=recipe.lora.dropout,
                      target_modules=target_modules(recipe, model.config.model_type), bias="none", task_type="CAUSAL_LM")
    out_dir = Path(t.output_dir) / "trl"
    config = SFTConfig(
        output_dir=str(out_dir), num_train_epochs=t.epochs, learning_rate=t.learning_rate,
        lr_scheduler_type="cosine", warmup_steps=t.warmup_ratio, weight_decay=t.weight_decay,
        per_device_train_batch_size=t.batch_size, gradient_accumulation_steps=t.grad_accum, max_grad_norm=1.0,
        seed=t.seed, data_seed=t.seed, use_cpu=True, save_strategy="no", eval_strategy="no", report_to=[],
        logging_steps=1, disable_tqdm=True, dataloader_num_workers=0, **settings)
    steps = Clock()

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            steps.__enter__()

        def on_step_end(self, *a, **k):
            steps.__exit__()

    trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(train_rows),
                         processing_class=tokenizer, peft_config=lora, callbacks=[StepTimer()])
    loop = Clock()
    with loop:
        result = trainer.train()
    peak = peak_rss_mb()
    trainer.model.save_pretrained(out_dir / "adapter")
    eval_loss = adapter_eval_loss(recipe, out_dir / "adapter", eval_set, tokenizer.pad_token_id)
    epochs = int(math.ceil(t.epochs))
    return {
        "contender": "trl",
        "setup": f"TRL {__import__('trl').__version__} SFTTrainer, " + ", ".join(f"{k}={v}" for k, v in settings.items())
                 + (f", attn_implementation={attention}" if attention else "")
                 + f", prompt-completion (loss on answers), batch {t.batch_size} x accum {t.grad_accum}",
        "train_examples": len(train_rows), "eval_examples": len(eval_set), "epochs": epochs,
        "optimizer_steps": result.global_step, "model_load_s": load.wall,
        "epoch_s": loop.wall / epochs, "epoch_cpu_s": loop.cpu / epochs,
        "epoch_steps_s": steps.wall / epochs, "epoch_steps_cpu_s": steps.cpu / epochs,
        "peak_rss_mb": peak, "eval_loss_best": eval_loss, "eval_loss_final": eval_loss,
        "final_train_loss": result.training_loss,
    }


def worker_afinar(recipe, data_dir: Path) -> dict:
    """Contender B: afinar.training.train, instrumented from outside (src/ is not modified)."""
    import torch
    from peft import PeftModel

    import afinar.training.loop as loop
    import afinar.training.runtime as runtime
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
    compiled = []
    decide = runtime.decide_compile
    runtime.decide_compile = lambda *a, **k: compiled.append(decide(*a, **k)) or compiled[-1]

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
        "setup": setup.describe() + (", compiled layers" if compiled and compiled[0] else "")
                 + f", batch {recipe.train.batch_size} x accum {recipe.train.grad_accum}",
        "compiled": bool(compiled and compiled[0]),
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
    from afinar.recipes import validate_recipe

    raw = json.loads(Path(args.recipe_json).read_text(encoding="utf-8"))
    recipe = validate_recipe(raw, "bench", Path(args.recipe_json).parent)
    data_dir = Path(recipe.train.output_dir) / recipe.name / "data"
    began = time.perf_counter()
    workers = {"seeds": worker_seeds, "trl": worker_trl, "afinar": worker_afinar}
    out = workers[args.worker](recipe, data_dir)
    out["process_s"] = time.perf_counter() - began
    out["torch_threads"] = __import__("torch").get_num_threads()
    real_stdout.write(json.dumps(out) + "\n")
    real_stdout.flush()


# --------------------------------------------------------------------------------------------
# driver


def run_contender(kind: str, recipe_json: Path, log_path: Path) -> dict:
    print(f"  running {kind} ...", flush=True)
    proc, wall, busy = run_process([sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--recipe-json", str(recipe_json)],
                                   log_path, kind, ROOT)
    if proc.returncode != 0:
        tail = "".join(log_path.read_text(encoding="utf-8").splitlines(keepends=True)[-40:])
        raise SystemExit(f"{kind} worker failed (exit {proc.returncode}); last lines of {log_path}:\n{tail}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["worker_wall_s"] = wall
    out["other_processes_cpu_share"] = busy
    print(f"  {kind}: {out['epoch_s']:.1f} s/epoch ({out['epoch_cpu_s']:.1f} CPU s), peak {out['peak_rss_mb']:.0f} MB, "
          f"eval loss {out['eval_loss_best']:.4f}; worker {wall:.0f} s"
          + (f"; WARNING: other processes used {100 * busy:.0f}% of the CPUs meanwhile" if busy > 0.1 else ""), flush=True)
    return out


CONTENDERS = (("seeds", "seeds' recipe"), ("trl", "TRL SFTTrainer"), ("afinar", "afinar"))


def model_shape(recipe) -> dict:
    """Parameters (the tied embedding counted once, as the output layer), layers and width."""
    import torch

    from afinar.training.lora import load_base

    model = load_base(recipe, torch.bfloat16, "cpu")
    c = model.config
    shape = {"params": sum(p.numel() for p in model.parameters()), "layers": c.num_hidden_layers,
             "attention_width": c.num_attention_heads * getattr(c, "head_dim", c.hidden_size // c.num_attention_heads)}
    del model
    return shape


def nominal_flops(lengths: list[int], shape: dict) -> float:
    """FLOPs of one LoRA training epoch over examples of these lengths, counted the usual way:
    4N per token (forward 2N, backward through the frozen weights 2N; the adapters' own are
    negligible) plus causal attention, 2 L^2 x width per layer forward and twice that backward."""
    dense = 4 * shape["params"] * sum(lengths)
    attention = 3 * 2 * shape["layers"] * shape["attention_width"] * sum(n * n for n in lengths)
    return float(dense + attention)


def native_bf16() -> bool:
    from afinar.training.runtime import cpu_supports_bf16

    return cpu_supports_bf16()


def precision_of(kind: str) -> str:
    """The precision a contender computes in here: the seeds' script as written (fp32); TRL and
    afinar in bf16 where the CPU has it natively, else fp32 (afinar's `precision: auto`)."""
    return "bf16" if kind != "seeds" and native_bf16() else "fp32"


def bench_dataset(name: str, args, workdir: Path, peak: dict) -> dict | None:
    from afinar.data import prepare_data
    from afinar.models import load_tokenizer
    from afinar.recipes import validate_recipe

    rows = dataset_rows(name, args.examples)
    if rows is None:
        print(f"{name}: skipped ({ALPACA_FILE} is absent)", flush=True)
        return None
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
    flops = nominal_flops(lengths, model_shape(recipe))
    print(f"{name}: {len(train_enc)} train / {len(eval_enc)} eval examples, {sum(lengths)} tokens per epoch "
          f"(mean {sum(lengths) / len(lengths):.0f}, max {max(lengths)}), {args.epochs} epoch(s)", flush=True)
    recipe_json = workdir / f"{name}.recipe.json"
    recipe_json.write_text(json.dumps(raw, ensure_ascii=False), encoding="utf-8")
    out = {"dataset": name, "examples": args.examples, "train_examples": len(train_enc), "eval_examples": len(eval_enc),
           "epochs": args.epochs, "tokens_per_epoch": sum(lengths), "mean_tokens": sum(lengths) / len(lengths),
           "max_tokens": max(lengths), "nominal_flops_per_epoch": flops}
    for kind, _ in CONTENDERS:
        if kind in args.skip:
            continue
        c = out[kind] = run_contender(kind, recipe_json, workdir / "workers.log")
        c["useful_tokens_per_s"] = sum(lengths) / c["epoch_s"]
        c["useful_tokens_per_s_steps"] = sum(lengths) / c["epoch_steps_s"]
        c["gflops"] = flops / c["epoch_s"] / 1e9
        c["precision"] = precision_of(kind)  # every share is of the peak of the precision used
        c["share_of_matmul_peak"] = c["gflops"] / peak[c["precision"]]["peak_gflops"]
    a = out.get("afinar")
    for rival in ("seeds", "trl"):
        if a and rival in out:
            r = out[rival]
            out[f"speedup_vs_{rival}"] = r["epoch_s"] / a["epoch_s"]
            out[f"speedup_vs_{rival}_cpu_time"] = r["epoch_cpu_s"] / a["epoch_cpu_s"]
            out[f"eval_loss_ok_vs_{rival}"] = a["eval_loss_best"] <= r["eval_loss_best"] * (1 + LOSS_TOLERANCE)
    return out


def verdicts(r: dict) -> list[tuple[str, bool]]:
    """(target, met) for one dataset; the targets are set for FAQ-style data."""
    out = []
    for rival, target in (("seeds", TARGET_VS_SEEDS), ("trl", TARGET_VS_TRL)):
        if f"speedup_vs_{rival}" in r:
            out.append((f">= {target:g}x faster than {dict(CONTENDERS)[rival]} ({r[f'speedup_vs_{rival}']:.1f}x)",
                        r[f"speedup_vs_{rival}"] >= target))
            out.append((f"eval loss <= {dict(CONTENDERS)[rival]}'s", r[f"eval_loss_ok_vs_{rival}"]))
    if "afinar" in r:
        share, precision = r["afinar"]["share_of_matmul_peak"], r["afinar"]["precision"]
        out.append((f">= {TARGET_SHARE:.0%} of the {precision} matmul peak ({share:.0%})", share >= TARGET_SHARE))
    return out


def markdown(results: list[dict], peak: dict) -> str:
    lines = [
        "| dataset | contender | s / epoch | CPU s / epoch | useful tok/s | GFLOP/s (share of the peak of its precision) | peak RSS | eval loss (answers) | steps | other load |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        for key, label in CONTENDERS:
            if key not in r:
                continue
            c = r[key]
            lines.append(f"| {r['dataset']} ({r['train_examples']} train / {r['eval_examples']} eval, mean {r['mean_tokens']:.0f} tokens, "
                         f"{r['epochs']} ep) | {label} | {c['epoch_s']:.1f} | {c['epoch_cpu_s']:.1f} | {c['useful_tokens_per_s']:.0f} | "
                         f"{c['gflops']:.0f} ({c['share_of_matmul_peak']:.0%} of {c.get('precision', 'bf16')}) | {c['peak_rss_mb'] / 1024:.2f} GB | "
                         f"{c['eval_loss_best']:.4f} | {c['optimizer_steps']} | {100 * c['other_processes_cpu_share']:.0f}% |")
    lines += ["", f"Matmul peaks measured here: bf16 {peak['bf16']['peak_gflops']:.0f} GFLOP/s "
              f"({'native' if native_bf16() else 'emulated'}), fp32 {peak['fp32']['peak_gflops']:.0f}, with "
              f"{peak['threads']} threads (bench/machine.py); each share is of the peak of the precision the "
              "contender computed in.", ""]
    for r in results:
        checks = verdicts(r)
        kind = "targets" if r["dataset"] == "faq" else "for reference (targets are for FAQ data)"
        lines.append(f"- {r['dataset']}, {kind}: " + "; ".join(f"{text}: {'met' if ok else 'NOT met'}" for text, ok in checks) + ".")
    lines += ["", "Other load: share of the machine's CPUs used by other processes while the contender ran "
              "(wall-time figures are unreliable when it is high; CPU time is less affected)."]
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", nargs="+", choices=["faq", "demo", "alpaca"], default=["faq", "demo", "alpaca"])
    p.add_argument("--skip", nargs="*", default=[], choices=[k for k, _ in CONTENDERS], help="contenders not to run")
    p.add_argument("--examples", type=int, default=40, help="records per dataset before the train/eval split (default 40)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--eval-fraction", type=float, default=0.2, help="share held out for the eval loss (default 0.2)")
    p.add_argument("--lr", type=float, default=2e-4, help="learning rate of both contenders (afinar's default)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results JSON (default {DEFAULT_OUT.relative_to(ROOT)})")
    p.add_argument("--keep", action="store_true", help="keep the temporary work folder (runs, logs)")
    p.add_argument("--worker", choices=[k for k, _ in CONTENDERS], help=argparse.SUPPRESS)
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
    peak = matmul_peak()
    print(f"matmul peak: bf16 {peak['bf16']['peak_gflops']:.0f} GFLOP/s, fp32 {peak['fp32']['peak_gflops']:.0f} "
          f"(bf16 {'native' if native_bf16() else 'emulated: TRL and afinar train in fp32 here'})", flush=True)
    try:
        results = [r for name in args.dataset if (r := bench_dataset(name, args, workdir, peak))]
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    table = markdown(results, peak)
    report = {
        "command": command, "python": sys.executable, "machine": machine_info(), "matmul": peak,
        "settings": {"dataset": args.dataset, "examples": args.examples, "epochs": args.epochs,
                     "eval_fraction": args.eval_fraction, "learning_rate": args.lr, "seed": args.seed},
        "targets": {"vs_seeds": TARGET_VS_SEEDS, "vs_trl": TARGET_VS_TRL, "share_of_bf16_peak": TARGET_SHARE,
                    "eval_loss": f"afinar <= each rival's (within {LOSS_TOLERANCE:.1%})", "trl_settings": TRL_SETTINGS,
                    "trl_settings_text": ", ".join(f"{k}={v}" for k, v in TRL_SETTINGS.items())},
        "results": results, "markdown": table, "bench_seconds": round(time.perf_counter() - began, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print()
    print(table)
    print(f"\n{report['bench_seconds']:.0f} s in all; results in {args.out}")


if __name__ == "__main__":
    main()
