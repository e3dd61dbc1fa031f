"""The architectures of the base models the bundled recipes name, so a recipe's GPU settings can be
checked on a laptop without downloading 7-8B models.

Each entry is the model's published config.json, reduced to the fields that shape the network.
`meta_model(name)` builds the model on PyTorch's meta device (no memory, no weights) so that
target modules and parameter counts can be checked exactly as they will be on the GPU.
"""

from __future__ import annotations

KNOWN: dict[str, dict] = {
    "mistralai/Mistral-7B-Instruct-v0.2": {
        "model_type": "mistral", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32000, "max_position_embeddings": 32768,
        "rope_theta": 1000000.0, "sliding_window": None, "tie_word_embeddings": False},
    "meta-llama/Llama-2-7b-chat-hf": {
        "model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000, "max_position_embeddings": 4096,
        "tie_word_embeddings": False},
    "microsoft/phi-2": {
        "model_type": "phi", "hidden_size": 2560, "intermediate_size": 10240, "num_hidden_layers": 32,
        "num_attention_heads": 32, "vocab_size": 51200, "max_position_embeddings": 2048, "partial_rotary_factor": 0.4,
        "tie_word_embeddings": False},
    "meta-llama/Llama-3.1-8B-Instruct": {
        "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 131072,
        "rope_theta": 500000.0, "tie_word_embeddings": False},
    "meta-llama/Llama-3.2-1B-Instruct": {
        "model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
        "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 131072,
        "rope_theta": 500000.0, "tie_word_embeddings": True},
}


def known_config(name: str):
    """The transformers config of a known base model (None for others)."""
    from transformers import AutoConfig

    fields = KNOWN.get(name)
    if fields is None:
        return None
    fields = dict(fields)
    return AutoConfig.for_model(fields.pop("model_type"), **fields)


def meta_model(name: str):
    """The model's module tree on the meta device: exact layer names and parameter counts, no memory."""
    import torch
    from transformers import AutoModelForCausalLM

    config = known_config(name)
    if config is None:
        return None
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)
