"""`afinar demo`: the whole pipeline on the bundled Spanish tutor dataset and the embedded model.

Steps (each prints what it does and what it found; long ones show a progress bar):
  1. check the bundled dataset (afinar data check)
  2. prepare train/eval splits with paraphrases and refusals (afinar data prepare)
  3. fine-tune LoRA adapters on the embedded model on this CPU (afinar train)
  4. evaluate (afinar eval): base model vs tuned assistant on the held-out split and the bundled
     probe (paraphrases, out-of-domain questions, injection attempts); writes an HTML report
  5. say where everything is and how to chat with it
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from afinar.data import check_data, prepare_data
from afinar.models import load_tokenizer
from afinar.recipes import load_recipe

TOTAL_STEPS = 5


def demo_recipe_path() -> Path:
    return Path(str(resources.files("afinar") / "resources" / "demo" / "tutor.yaml"))


def _step(number: int, text: str) -> None:
    print(f"\n[{number}/{TOTAL_STEPS}] {text}", flush=True)


def run_demo(workdir: Path, overrides: list[str] | None = None, progress: bool = True) -> dict:
    """Run the demo into `workdir`; returns what each step produced."""
    from afinar.evaluation import evaluate
    from afinar.evaluation.summary import summary_lines
    from afinar.training import train

    recipe_path = demo_recipe_path()
    recipe = load_recipe(recipe_path, [f"train.output_dir={workdir}", *(overrides or [])])
    run_dir = Path(workdir) / recipe.name
    print(f"afinar demo: recipe {recipe_path}\nbase model: {recipe.base_model}")

    _step(1, f"Checking {Path(recipe.data.files[0]).name}")
    tokenizer = load_tokenizer(recipe.base_model, recipe.trust_remote_code, recipe.chat_template)
    report = check_data(recipe.data.files, schema=recipe.data.schema_, columns=recipe.data.columns,
                        tokenizer=tokenizer, tokenizer_name=recipe.base_model, system_prompt=recipe.system_prompt,
                        max_seq_len=recipe.train.max_seq_len, min_examples=recipe.data.min_examples)
    for line in report.summary_lines():
        print("  " + line)

    _step(2, "Preparing train/eval data (split by answer, paraphrases, out-of-domain refusals)")
    prepared = prepare_data(recipe, run_dir / "data", tokenizer, recipe.base_model, report=report)
    print("  " + prepared.summary())

    _step(3, f"Training LoRA adapters ({recipe.train.epochs:g} epochs on this machine)")
    result = train(recipe, reuse_data=True, progress=progress)
    print(f"  {result.steps} steps, {result.tokens} tokens in {result.seconds / 60:.1f} min "
          f"({result.tokens / max(result.seconds, 1e-9):.0f} tokens/s)")

    _step(4, "Evaluating: base model vs tuned assistant (afinar eval)")
    evaluation = evaluate(run_dir, progress=progress)
    for line in summary_lines(evaluation.report):
        print(line)
    print(f"  report with plots and every answer side by side: {evaluation.html_path}")

    _step(5, "Done")
    print(f"  run folder: {run_dir}  (adapter/, guard/, eval/report.html, loss.png, metrics.jsonl, summary.json, recipe.yaml)")
    print(f"  chat with it:  afinar chat {run_dir}")
    print(f"  one question:  afinar ask {run_dir} \"¿Qué es una cola de prioridad?\" --json")
    print(f"  train it again with your changes: afinar train {recipe_path} --set train.epochs=3")
    return {"recipe": recipe, "report": report, "prepared": prepared, "result": result, "evaluation": evaluation}
