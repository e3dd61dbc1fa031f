"""Shared fixtures: an isolated home for every test, and a tiny random Llama model.

The tiny model (hidden size 16, 2 layers) and its byte-level BPE tokenizer are built here,
in the test session, from text in this file: no download, and stage tests run in seconds.
The embedded model, for the few integration tests, is converted once per session into a
session-wide cache (`embedded_cache`).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = [
    "¿Qué es una pila? Una pila es una estructura LIFO: el último en entrar es el primero en salir.",
    "¿Qué es una cola? Una cola es FIFO: el primero en entrar es el primero en salir.",
    "La búsqueda binaria divide el arreglo a la mitad en cada paso: O(log n).",
    "def push(pila, x):\n    pila.append(x)\n    return pila",
    "What is a stack? A stack is a LIFO structure. What is a queue? A queue is FIFO.",
    "Eres un tutor de algoritmos. Lo siento, solo puedo responder preguntas sobre algoritmos.",
    "¿Cuánto cuesta el curso de finanzas? El curso cuesta 300 soles y dura ocho semanas.",
] * 20


def pytest_configure(config):
    """Under pytest-xdist (`make test` runs 2 workers) each worker gets its share of the cores:
    two workers with torch's default thread count each would fight over the same ones."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or workers) // workers))


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """Point home, the HF cache and the working folder at tmp_path; forbid hub access."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("HF_HOME", str(home / ".cache" / "huggingface"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    if not os.environ.get("AFINAR_CACHE"):
        monkeypatch.setenv("AFINAR_CACHE", str(home / ".cache" / "afinar"))
    monkeypatch.chdir(tmp_path)
    return home


def build_tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    fast.chat_template = CHATML
    return fast


def build_tiny_model(vocab_size: int, seed: int = 0, hidden: int = 16, positions: int = 512):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=positions,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return LlamaForCausalLM(config)


def save_tiny_model(out: Path, **shape) -> Path:
    """Save a tiny random Llama (build_tiny_model's `shape` options) and its tokenizer in `out`."""
    tokenizer = build_tiny_tokenizer()
    build_tiny_model(len(tokenizer), **shape).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved tiny random Llama model + tokenizer folder, usable as a recipe's base_model."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from afinar.models import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


@pytest.fixture(scope="session")
def embedded_cache(tmp_path_factory) -> Path:
    """One conversion of the embedded model per test session, shared by integration tests and by
    the pytest-xdist workers (their base folders share a parent; ~60 s per conversion here)."""
    if os.environ.get("AFINAR_CACHE"):
        return Path(os.environ["AFINAR_CACHE"])
    shared = tmp_path_factory.getbasetemp().parent if os.environ.get("PYTEST_XDIST_WORKER") else tmp_path_factory.getbasetemp()
    (shared / "afinar-cache").mkdir(parents=True, exist_ok=True)
    return shared / "afinar-cache"


@pytest.fixture
def embedded(embedded_cache, monkeypatch) -> Path:
    """The embedded model's safetensors folder (converted on first use in this session; a worker
    that finds another converting waits for it)."""
    from filelock import FileLock

    from afinar.models import ensure_embedded_model

    monkeypatch.setenv("AFINAR_CACHE", str(embedded_cache))
    with FileLock(str(embedded_cache / "embedded.lock")):
        return ensure_embedded_model()


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path
