"""Load a base model for training and attach LoRA (or DoRA) adapters with peft.

Target modules per architecture ('auto'): every linear projection of attention and MLP, the
setting the QLoRA paper found to match full fine-tuning; `lora.target_modules` can name fewer
(the seeds used q/k/v/o) or 'all-linear'. QLoRA loads the base in 4-bit NF4 with double
quantisation and compute in the run's precision (bf16 where the chip has it, else fp32) through bitsandbytes; the adapters stay in fp32.
"""

from __future__ import annotations

import torch

from afinar.errors import AfinarError
from afinar.models import hub_token, resolve_model_path
from afinar.recipes import Recipe

TARGETS = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "phi": ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"],
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
}


def target_modules(recipe: Recipe, model_type: str) -> list[str] | str:
    """The recipe's target modules, with 'auto' resolved for the architecture."""
    wanted = recipe.lora.target_modules
    if wanted == "all-linear":
        return "all-linear"
    if wanted == "auto":
        return TARGETS.get(model_type, "all-linear")
    return [wanted] if isinstance(wanted, str) else list(wanted)


# The same layer under another architecture's name (phi-2's `dense` is Llama's `o_proj`), so a
# recipe written for one base (the seeds' phi-2) still runs with `--set base_model=embedded`.
EQUIVALENT = {"dense": "o_proj", "o_proj": "dense", "fc1": "up_proj", "up_proj": "fc1", "fc2": "down_proj", "down_proj": "fc2"}


def linear_names(model) -> set[str]:
    return {name.rsplit(".", 1)[-1] for name, mod in model.named_modules() if isinstance(mod, torch.nn.Linear) or "Linear" in type(mod).__name__}


def check_targets(model, targets: list[str] | str, log=None) -> list[str] | str:
    """The targets as this model names them (an equivalent name is taken, and said, when the
    recipe's does not exist here); fails early, naming the model's linear layers, otherwise."""
    if targets == "all-linear":
        return targets
    names = linear_names(model)
    resolved = [t if t in names or EQUIVALENT.get(t) not in names else EQUIVALENT[t] for t in targets]
    missing = [t for t in resolved if t not in names]
    if missing:
        raise AfinarError(f"lora.target_modules: {missing} not in this model; its linear layers are {sorted(names)}")
    swapped = [f"{a} -> {b}" for a, b in zip(targets, resolved) if a != b]
    if swapped and log is not None:
        log(f"lora.target_modules: this architecture names them differently ({', '.join(swapped)})")
    return list(dict.fromkeys(resolved))


def load_base(recipe: Recipe, dtype: torch.dtype, device: torch.device | str = "cpu"):
    """The base causal LM, frozen, in `dtype` (or NF4 for QLoRA). Safetensors only."""
    from transformers import AutoModelForCausalLM

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars for a 1-second step are noise
    path = resolve_model_path(recipe.base_model)
    kwargs = {"dtype": dtype, "trust_remote_code": recipe.trust_remote_code, "token": hub_token(), "use_safetensors": True}
    if recipe.quantization == "nf4":
        from transformers import BitsAndBytesConfig

        # compute in the run's precision: bf16 where the chip has it; on a CPU without AVX-512
        # BF16, fp32 (bf16 is emulated there: measured 0.9 against 142 GFLOP/s on an AMD EPYC,
        # and a 1-step QLoRA test on the embedded model went from 96 s to 13 s)
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype)
        kwargs["device_map"] = {"": str(device)}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        raise AfinarError(f"cannot load base model {recipe.base_model!r}: {exc}") from exc
    if recipe.quantization != "nf4":
        model.to(device)
    model.config.use_cache = False
    return model


def attach_lora(model, recipe: Recipe, gradient_checkpointing: bool, log=print):
    """Wrap the model with trainable LoRA adapters (peft)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    targets = check_targets(model, target_modules(recipe, model.config.model_type), log)
    if recipe.quantization == "nf4":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    config = LoraConfig(r=recipe.lora.r, lora_alpha=recipe.lora.alpha, lora_dropout=recipe.lora.dropout,
                        target_modules=targets, use_dora=recipe.lora.dora, bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def build_model(recipe: Recipe, setup, device, train_tokens: int, log=print):
    """The base model with fresh adapters, set up as `setup` says (attention, input dtype, compiled layers)."""
    from afinar.training.compiled import cache_is_warm, compile_layers, inductor_cache
    from afinar.training.lora import attach_lora, load_base
    from afinar.training.runtime import decide_compile

    torch.manual_seed(recipe.train.seed)
    base = load_base(recipe, setup.weights_dtype, device)
    if setup.attention:
        base.set_attn_implementation(setup.attention)
    model = attach_lora(base, recipe, setup.gradient_checkpointing, log)
    if setup.precision != "fp32" and recipe.quantization != "nf4":
        keep_input_dtype(model)
    setup.compile = decide_compile(recipe, setup, model, train_tokens)
    if setup.compile:
        took = "a few seconds: its cache is warm" if cache_is_warm(model) else "about a minute, the first time on a machine"
        if compile_layers(model):
            log(f"compiling the decoder layers at the first steps ({took}; cached in {inductor_cache()})")
    trainable, total = model.get_nb_trainable_parameters()
    log(f"model: {recipe.base_model} ({total / 1e6:.0f}M parameters, {setup.describe()}); "
        f"LoRA r={recipe.lora.r} trains {trainable / 1e6:.2f}M ({100 * trainable / total:.2f}%)")
    return model


def keep_input_dtype(model) -> None:
    """peft casts each adapter's input to the adapter's dtype (fp32 here) and autocast casts it
    straight back to bf16 for the matmul: two activation-sized copies per adapted layer, for the
    same numbers. Skipping them measured 775 -> 828 tokens/s on FAQ examples (eager, 2-core CPU)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.cast_input_dtype_enabled = False
