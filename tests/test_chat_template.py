"""Rendering and loss masks, token by token, on the tiny tokenizer and the embedded one."""

import pytest

from afinar.chat_template import FALLBACK_TEMPLATE, IGNORE_INDEX, encode_chat, ensure_chat_template, render_prompt, with_system

CONVO = [
    {"role": "system", "content": "Eres un tutor."},
    {"role": "user", "content": "¿Qué es una pila?"},
    {"role": "assistant", "content": "Una pila es LIFO.\n```python\npila = []\n```"},
    {"role": "user", "content": "¿Y una cola?"},
    {"role": "assistant", "content": "Una cola es FIFO."},
]


def labelled_runs(tokenizer, enc):
    """Decode each maximal run of labelled tokens separately."""
    runs, current = [], []
    for tok, lab in zip(enc.input_ids, enc.labels):
        if lab != IGNORE_INDEX:
            assert lab == tok
            current.append(tok)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    if current:
        runs.append(tokenizer.decode(current))
    return runs


def check_masks(tokenizer, end_of_turn):
    enc = encode_chat(tokenizer, CONVO)
    assert len(enc.input_ids) == len(enc.labels)
    assert labelled_runs(tokenizer, enc) == [CONVO[2]["content"] + end_of_turn, CONVO[4]["content"] + end_of_turn]
    # every unlabelled token is outside the replies: the prompt text decodes without them
    prompt_ids = [t for t, lab in zip(enc.input_ids, enc.labels) if lab == IGNORE_INDEX]
    assert "¿Qué es una pila?" in tokenizer.decode(prompt_ids) and "LIFO" not in tokenizer.decode(prompt_ids)


def test_masks_token_by_token_tiny(tiny_tokenizer):
    check_masks(tiny_tokenizer, "<|im_end|>")


@pytest.mark.integration
def test_masks_token_by_token_embedded(embedded):
    from afinar.models import load_tokenizer

    check_masks(load_tokenizer("embedded"), "<|im_end|>")


def test_render_prompt_ends_at_assistant_turn(tiny_tokenizer):
    text = render_prompt(tiny_tokenizer, CONVO[:2])
    assert text.endswith("<|im_start|>assistant\n")
    assert encode_chat(tiny_tokenizer, CONVO).input_ids[: len(tiny_tokenizer(text)["input_ids"])] == tiny_tokenizer(text)["input_ids"]


def test_fallback_template_uses_eos(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = None
    ensure_chat_template(tok)
    assert tok.chat_template == FALLBACK_TEMPLATE
    enc = encode_chat(tok, CONVO[1:3])
    assert labelled_runs(tok, enc) == [CONVO[2]["content"] + tok.eos_token]


def test_with_system_keeps_an_existing_system_turn():
    assert with_system(CONVO, "otro")[0]["content"] == "Eres un tutor."
    assert with_system(CONVO[1:], "S")[0] == {"role": "system", "content": "S"}
    assert with_system(CONVO[1:], "") == CONVO[1:]
