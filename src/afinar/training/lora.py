"""Load a base model for training and attach LoRA (or DoRA) adapters with peft.

Target modules per architecture ('auto'): every linear projection of attention and MLP, the
setting the QLoRA paper found to match full fine-tuning; `lora.target_modules` can name fewer
(the seeds used q/k/v/o) or 'all-linear'. QLoRA loads the base in 4-bit NF4 with double
quantisation and bf16 compute through bitsandbytes; the adapters stay in fp32.
"""

from __future__ import annotations

import torch

from afinar.errors import AfinarError
from afinar.models import hub_token, resolve_model_path
from afinar.recipe import Recipe

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


def check_targets(model, targets: list[str] | str) -> None:
    """Fail early, naming the model's linear layers, when a target module does not exist."""
    if targets == "all-linear":
        return
    names = {name.rsplit(".", 1)[-1] for name, mod in model.named_modules() if isinstance(mod, torch.nn.Linear) or "Linear" in type(mod).__name__}
    missing = [t for t in targets if t not in names]
    if missing:
        raise AfinarError(f"lora.target_modules: {missing} not in this model; its linear layers are {sorted(names)}")


def load_base(recipe: Recipe, dtype: torch.dtype, device: torch.device | str = "cpu"):
    """The base causal LM, frozen, in `dtype` (or NF4 for QLoRA). Safetensors only."""
    from transformers import AutoModelForCausalLM

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars for a 1-second step are noise
    path = resolve_model_path(recipe.base_model)
    kwargs = {"dtype": dtype, "trust_remote_code": recipe.trust_remote_code, "token": hub_token(), "use_safetensors": True}
    if recipe.quantization == "nf4":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16)
        kwargs["device_map"] = {"": str(device)}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        raise AfinarError(f"cannot load base model {recipe.base_model!r}: {exc}") from exc
    if recipe.quantization != "nf4":
        model.to(device)
    model.config.use_cache = False
    return model


def attach_lora(model, recipe: Recipe, gradient_checkpointing: bool):
    """Wrap the model with trainable LoRA adapters (peft)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    targets = target_modules(recipe, model.config.model_type)
    check_targets(model, targets)
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
