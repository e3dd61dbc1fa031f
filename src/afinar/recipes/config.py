"""Recipes: one YAML file that describes a whole assistant, mapped onto typed config classes.

Precedence: field defaults < the recipe file < `--set key=value` overrides. `load_recipe`
validates everything in one pass and raises `RecipeError` listing every problem (unknown fields
with a suggestion, wrong types, out-of-range values, missing data files, inconsistent settings).
The defaults work for the embedded model on a laptop CPU. `Recipe.to_yaml()` writes the
resolved recipe that is saved next to every run, so a run can be reproduced from its folder.

Every field has a description; `afinar recipe fields` (and the docs) print them.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from afinar.errors import RecipeError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_assignment=True)


class DataConfig(_Section):
    files: list[str] = Field(default_factory=list, description="Dataset files (CSV, JSON, JSONL), relative to the recipe file.")
    schema_: Literal["auto", "qa", "alpaca", "messages", "user_story"] = Field(
        "auto", alias="schema", description="Record layout; 'auto' detects it from the column names.")
    columns: dict[str, str] = Field(default_factory=dict, description="Map a role to a column, e.g. {question: 'Pregunta frecuente', answer: 'Respuesta'}.")
    eval_fraction: float = Field(0.15, ge=0.0, lt=0.9, description="Share of the data held out for evaluation.")
    split_by: Literal["answer", "record"] = Field("answer", description="'answer' keeps paraphrases of one answer on the same side of the split (no leakage); 'record' splits records.")
    paraphrases: int = Field(0, ge=0, le=5, description="Template paraphrases added per training question (Spanish and English templates).")
    negatives: float = Field(0.1, ge=0.0, le=0.3, description="Share of out-of-domain questions answered with the refusal (needs `refusal`).")
    generated: list[str] = Field(default_factory=list, description="Files written by `afinar data generate` (JSONL: paraphrases, near misses, out-of-domain questions), relative to the recipe file. Paraphrases train and join the index; all calibrate the guard. Never mixed in unless listed here.")
    min_examples: int = Field(10, ge=1, description="Fewer usable examples than this is an error.")
    skip_invalid: bool = Field(False, description="Train past records with errors (they are counted and reported). Off: any error stops.")
    seed: int = Field(42, description="Seed for the split and the augmentation.")


class LoraConfig(_Section):
    r: int = Field(16, ge=1, le=1024, description="LoRA rank.")
    alpha: int = Field(32, ge=1, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input. 0 trains ~1.4x faster with ~35% less memory on CPU (measured); 0.05-0.1 may help very small datasets.")
    target_modules: str | list[str] = Field("auto", description="'auto' (attention and MLP projections for the architecture), 'all-linear', or a list of module names.")
    dora: bool = Field(False, description="Use DoRA (weight-decomposed LoRA).")


class TrainConfig(_Section):
    epochs: float = Field(3, gt=0, description="Passes over the training data.")
    max_steps: int = Field(0, ge=0, description="Stop after this many optimizer steps (0: no limit).")
    learning_rate: float = Field(2e-4, gt=0, lt=1, description="Peak learning rate.")
    lr_scheduler: Literal["cosine", "linear", "constant"] = Field("cosine", description="Decay after warm-up.")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Share of steps spent warming up.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay on the adapter weights.")
    batch_size: int = Field(8, ge=1, description="Examples per optimizer step, grouped by length (padded only to the longest in the group).")
    micro_batch_tokens: int = Field(0, ge=0, description="Most padded tokens computed at once; a step's examples are split into micro-batches under it (activation memory is proportional). 0: auto (1024 on CPU, where speed no longer grows above it; sized to the GPU's memory on CUDA).")
    grad_accum: int = Field(1, ge=1, description="Batches of batch_size examples per optimizer step (effective batch = batch_size x grad_accum).")
    max_seq_len: int = Field(1024, ge=16, description="Longest example in tokens; longer ones are reported by `data check`.")
    packing: Literal["auto", "on", "off"] = Field("auto", description="Pack several examples per row instead of padding; 'auto' uses what the benchmark measured faster on the device.")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field("auto", description="'auto': bf16 autocast where the device supports it, else fp32.")
    gradient_checkpointing: Literal["auto", "on", "off"] = Field("auto", description="'auto' turns it on only when the memory estimate requires it.")
    compile: Literal["auto", "on", "off"] = Field("auto", description="Compile the decoder layers (torch.compile; ~1.2x faster steps on CPU, measured). 'auto': on a CPU, for runs long enough to repay the compilation (250k training tokens; 60k once the compile cache is warm).")
    eval_every: int = Field(0, ge=0, description="Evaluate every N steps (0: at the end of each epoch).")
    save_every: int = Field(0, ge=0, description="Checkpoint every N steps (0: at the end of each epoch).")
    seed: int = Field(42, description="Seed for weights, order and dropout.")
    output_dir: str = Field("runs", description="Runs are written to <output_dir>/<name>/ (relative to the working folder).")
    tensorboard: bool = Field(False, description="Also log to TensorBoard (needs the tensorboard package).")

    @field_validator("packing", "gradient_checkpointing", "compile", mode="before")
    @classmethod
    def _yaml_on_off(cls, value):
        """YAML reads a bare on/off/yes/no as a boolean; accept it as the word it was."""
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


class GuardConfig(_Section):
    mode: Literal["auto", "off", "refuse", "strict"] = Field(
        "auto", description="'refuse': out-of-domain questions get the refusal; 'strict': only curated answers; 'auto': refuse when a refusal is set, else off.")
    threshold: float | None = Field(None, description="In-domain score threshold for both refuse and strict mode (scores are at most 1; calibrated thresholds are about 0.78, see runs/<name>/guard/guard.json); unset: calibrated from the training data.")

    @field_validator("mode", mode="before")
    @classmethod
    def _yaml_off(cls, value):
        """YAML reads a bare `off` as false."""
        return "off" if value is False else value


class GroundingConfig(_Section):
    mode: Literal["auto", "on", "off"] = Field(
        "auto", description="Put the best-matching records in the prompt, in training and at inference, so answers state the dataset's facts (also for records never trained on). 'auto': on for qa and messages data (records that carry knowledge), off for alpaca and user_story.")
    k: int = Field(3, ge=1, le=10, description="Most records given with a question.")
    margin: float = Field(0.02, ge=0.0, le=1.0, description="Records after the best one are given only when they score within this of it: one record when the ranking is confident (a 135M model copies well and chooses badly).")
    distractor_only: float = Field(0.0, ge=0.0, le=0.5, description="Share of training questions given only other records (the right one left out), taught to answer with the refusal: the records do not cover this. Off by default: at 0.1 the demo learned to refuse any question not worded like its record (docs/grounding.md).")
    negatives_with_records: bool = Field(False, description="Train the out-of-domain refusal examples (data.negatives) with the records their question retrieves (true) or with none (false, the default: with records, a run trained on teacher-written paraphrases refused 44% of in-domain questions; docs/grounding.md).")
    on_unfaithful: Literal["auto", "flag", "curated"] = Field(
        "auto", description="When a grounded answer states a number, time, price, e-mail, URL or name found in neither its records nor the question, or copies nothing from them (an echo of the question, garbled words): 'flag' it, or 'curated': answer with the best record's own answer instead (flagged too). 'auto': curated for qa and messages data, flag for alpaca and user_story (their records are worked examples: another request's output is no answer to this one).")

    @property
    def replaces_unfaithful(self) -> bool:
        """Whether an unfaithful answer is replaced by the best record's ('auto' not yet resolved by training: as curated)."""
        return self.on_unfaithful != "flag"

    @field_validator("mode", mode="before")
    @classmethod
    def _yaml_on_off(cls, value):
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


class TeacherConfig(_Section):
    url: str = Field("", description="The teacher for `afinar data generate`: an OpenAI-compatible endpoint (e.g. http://127.0.0.1:11434/v1 for Ollama, a vLLM server, `afinar serve`) or a local .gguf file run with llama.cpp.")
    model: str = Field("", description="The teacher's model name, as its endpoint lists it.")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the endpoint's key (read from the environment only, never written anywhere).")
    paraphrases: int = Field(5, ge=0, le=30, description="Paraphrases asked per record (informal, typos, shorthand, English, a situation described).")
    near_misses: int = Field(30, ge=0, le=500, description="Near-miss questions asked for the domain: its words, a request no record covers.")
    out_of_domain: int = Field(30, ge=0, le=500, description="Plain out-of-domain questions asked, in the domain's language.")
    output: str = Field("generated.jsonl", description="Where the generated file goes, relative to the recipe file (add it to data.generated to use it).")
    concurrency: int = Field(4, ge=1, le=64, description="Requests in flight at once.")
    timeout_s: float = Field(120.0, gt=0, description="Seconds before a request is abandoned and retried.")
    retries: int = Field(5, ge=0, le=20, description="Retries per request after a 429, a 5xx, a timeout or an unreadable reply (exponential backoff).")
    temperature: float = Field(0.8, ge=0.0, le=2.0, description="The teacher's sampling temperature (variety matters here).")
    max_tokens: int = Field(700, ge=16, le=8192, description="Longest reply asked of the teacher per request.")

    @field_validator("url")
    @classmethod
    def _no_credentials(cls, value: str) -> str:
        """A key in the URL would be saved with every run's recipe.yaml: the environment only."""
        from urllib.parse import parse_qs, urlsplit

        parts = urlsplit(value)
        if parts.username or parts.password or any(k.lower() in ("key", "api_key", "apikey", "token", "access_token")
                                                   for k in parse_qs(parts.query)):
            raise ValueError("the URL holds a credential; remove it and put the key in the environment "
                             "variable named by teacher.api_key_env (OPENAI_API_KEY by default)")
        return value


class GenerationConfig(_Section):
    max_new_tokens: int = Field(256, ge=1, le=8192, description="Longest answer in tokens.")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0 means greedy decoding (the default for domain assistants).")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling (with temperature > 0).")
    repetition_penalty: float = Field(1.1, ge=1.0, le=2.0, description="Penalty on repeated tokens (1.0: none).")


class EvalConfig(_Section):
    probe: str | None = Field(None, description="Probe JSONL for `afinar eval` (question, expect, optional reference, keys, kind), relative to the recipe file.")
    max_new_tokens: int = Field(192, ge=1, le=8192, description="Longest answer generated by `afinar eval`.")
    batch_size: int = Field(16, ge=1, le=512, description="Questions answered together by `afinar eval` (batched generation: ~7x the tokens/s of one at a time on CPU).")


class InterviewConfig(_Section):
    questions: list[str] = Field(default_factory=list, description="Questions asked in order by `afinar chat --interview`.")
    template: str = Field("", description="How the answers become one prompt; {1}, {2}, ... are the answers. Empty: one line per question and answer.")


class Recipe(_Section):
    name: str = Field("assistant", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="Run name: letters, digits, . _ - (the run folder is runs/<name>).")
    base_model: str = Field("embedded", description="'embedded' (SmolLM2-135M-Instruct, shipped with afinar), a Hugging Face id, or a local folder.")
    trust_remote_code: bool = Field(False, description="Run code shipped with a hub model. Off unless you trust its author.")
    chat_template: str | None = Field(None, description="A Jinja chat template overriding the base model's.")
    system_prompt: str = Field("", description="System prompt used in training and at inference.")
    refusal: str = Field("", description="What the assistant answers outside its domain.")
    quantization: Literal["none", "nf4"] = Field("none", description="'nf4': QLoRA (4-bit NF4 base, double quantisation, computed in bf16 where the chip has it, else fp32) via bitsandbytes.")
    data: DataConfig = Field(default_factory=DataConfig, description="Dataset files and how to split and augment them.")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA adapter settings.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Training settings.")
    guard: GuardConfig = Field(default_factory=GuardConfig, description="Keeping the assistant inside its domain.")
    grounding: GroundingConfig = Field(default_factory=GroundingConfig, description="Answering from the dataset's records, given in the prompt.")
    generation: GenerationConfig = Field(default_factory=GenerationConfig, description="Decoding settings.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="What `afinar eval` asks and how.")
    teacher: TeacherConfig = Field(default_factory=TeacherConfig, description="The teacher model that `afinar data generate` asks for paraphrases and near misses.")
    interview: InterviewConfig | None = Field(None, description="Optional guided interview.")
    _source: str | None = PrivateAttr(None)  # the recipe file it was read from (for `--resume` hints)

    @property
    def source(self) -> str | None:
        return self._source

    def __eq__(self, other) -> bool:  # two recipes are equal by their fields, wherever they were read from
        return isinstance(other, Recipe) and self.model_dump() == other.model_dump()

    __hash__ = None

    @property
    def guard_mode(self) -> str:
        if self.guard.mode == "auto":
            return "refuse" if self.refusal else "off"
        return self.guard.mode

    @property
    def grounded(self) -> bool:
        """Whether answers are grounded on records (`grounding.mode`, 'auto' by the data's schema)."""
        if self.grounding.mode == "auto":
            return self.data.schema_ in ("auto", "qa", "messages")
        return self.grounding.mode == "on"

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), allow_unicode=True, sort_keys=False, width=100)


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`["train.epochs=2", "name=x"]` -> nested dict; values are parsed as YAML scalars."""
    out: dict[str, Any] = {}
    problems = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            problems.append(f"--set {pair!r}: expected key=value, e.g. --set train.epochs=2")
            continue
        node = out
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
        try:
            node[leaf] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError as exc:
            problems.append(f"--set {pair!r}: the value is not valid YAML ({getattr(exc, 'problem', exc)}); "
                            "quote it, e.g. --set 'key=[\"a?\", \"b\"]'")
    if problems:
        raise RecipeError("--set", problems)
    return out


def _merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_recipe(path: str | Path | None, overrides: list[str] | None = None, check_files: bool = True) -> Recipe:
    """Read, merge and validate a recipe. `path=None` starts from the defaults. `check_files=False`
    skips the check that data and probe files exist: a run folder's saved recipe names the files
    it was prepared from, and the run must still load where they are absent (its data/ has them)."""
    raw: dict[str, Any] = {}
    source = str(path) if path else "defaults"
    base_dir = Path.cwd()
    if path:
        p = Path(path)
        if not p.exists():
            raise RecipeError(source, [f"no such recipe file: {p}"])
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}" if mark else "?"
            raise RecipeError(source, [f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})"]) from None
        if not isinstance(raw, dict):
            raise RecipeError(source, ["the recipe must be a mapping of fields (name: ..., data: ...)"])
        base_dir = p.resolve().parent
    raw = _merge(raw, parse_overrides(overrides or []))
    recipe = validate_recipe(raw, source, base_dir, check_files)
    recipe._source = str(path) if path else None
    return recipe


def validate_recipe(raw: dict[str, Any], source: str, base_dir: Path, check_files: bool = True) -> Recipe:
    """Build a Recipe from a dict, resolving data paths against base_dir; all problems at once."""
    problems = _file_problems(raw, base_dir) if check_files else []
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        raise RecipeError(source, [_describe(e) for e in exc.errors()] + problems) from None
    problems += _consistency_problems(recipe)
    if problems:
        raise RecipeError(source, problems)
    recipe.data.files = [str((base_dir / f).resolve()) for f in recipe.data.files]
    recipe.data.generated = [str((base_dir / f).resolve()) for f in recipe.data.generated]
    if recipe.teacher.output:
        recipe.teacher.output = str((base_dir / recipe.teacher.output).resolve())
    if recipe.eval.probe:
        recipe.eval.probe = str((base_dir / recipe.eval.probe).resolve())
    return recipe


def _file_problems(raw: dict, base_dir: Path) -> list[str]:
    probe = (raw.get("eval") or {}).get("probe") if isinstance(raw.get("eval"), dict) else None
    problems = [f"eval.probe: no such file: {base_dir / probe}"] if isinstance(probe, str) and not (base_dir / probe).exists() else []
    return problems + _data_file_problems(raw, base_dir)


def _data_file_problems(raw: dict, base_dir: Path) -> list[str]:
    files = (raw.get("data") or {}).get("files") if isinstance(raw.get("data"), dict) else None
    if isinstance(files, str):
        files = [files]
        raw["data"]["files"] = files
    if not files:
        return ["data.files: no dataset files; add data: {files: [my_data.csv]}"]
    if not isinstance(files, list):
        return []
    generated = (raw.get("data") or {}).get("generated") or []
    if isinstance(generated, str):
        generated = raw["data"]["generated"] = [generated]
    return [f"data.files[{i}]: no such file: {base_dir / f}" for i, f in enumerate(files)
            if isinstance(f, str) and not (base_dir / f).exists()] + [
        f"data.generated[{i}]: no such file: {base_dir / f} (write it with `afinar data generate`)"
        for i, f in enumerate(generated if isinstance(generated, list) else []) if isinstance(f, str) and not (base_dir / f).exists()]


def _consistency_problems(recipe: Recipe) -> list[str]:
    problems = []
    if recipe.guard.mode in ("refuse", "strict") and not recipe.refusal:
        problems.append(f"guard.mode is {recipe.guard.mode!r} but `refusal` is empty; add refusal: '<what to answer outside the domain>'")
    if recipe.data.negatives and not recipe.refusal:
        if "negatives" in recipe.data.model_fields_set:
            problems.append("data.negatives needs a `refusal` message to answer them with; add refusal: '...' or set data.negatives: 0")
        else:
            recipe.data.negatives = 0.0  # the default share means nothing without a refusal
    if recipe.lora.alpha and recipe.lora.r and recipe.lora.alpha / recipe.lora.r > 16:
        problems.append(f"lora.alpha / lora.r = {recipe.lora.alpha / recipe.lora.r:g} is unusually large (scale > 16); use alpha around 1-2x r")
    return problems


def _describe(error: dict) -> str:
    loc = ".".join(str(p) for p in error["loc"])
    if error["type"] == "extra_forbidden":
        hint = _suggest(error["loc"])
        return f"{loc}: unknown field{hint}"
    got = error.get("input")
    shown = f" (got {got!r})" if got is not None and not isinstance(got, (dict, list)) else ""
    return f"{loc}: {error['msg']}{shown}"


def _suggest(loc: tuple) -> str:
    model: type[BaseModel] = Recipe
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None) if field else None
        model = next((a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if model is None:
            return ""
    names = [f.alias or n for n, f in model.model_fields.items()]
    close = difflib.get_close_matches(str(loc[-1]), names, n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; known fields: {', '.join(names)}"


def field_docs(model: type[BaseModel] = Recipe, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted name, default, description) for every field, for `afinar recipe fields` and the docs."""
    rows = []
    for name, field in model.model_fields.items():
        key = prefix + (field.alias or name)
        annotation = field.annotation
        sub = next((a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if sub is not None:
            rows += field_docs(sub, key + ".")
            continue
        default = field.default_factory() if field.default_factory else field.default
        rows.append((key, repr(default), field.description or ""))
    return rows
