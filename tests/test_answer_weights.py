"""The weights a model answers with on CPU (assistant/weights.py): merged, packed copies of its
layers that give peft's answers, leave the base untouched, and follow the adapter in use."""

import pytest
import torch
from conftest import build_tiny_model, save_tiny_model

from afinar.assistant.weights import AnsweringLinear, AnswerWeights

BF16 = pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="this CPU has no bf16 matmul")


def _lora(seed, targets=("q_proj", "v_proj", "up_proj")):
    from peft import LoraConfig

    torch.manual_seed(seed)
    return LoraConfig(r=4, lora_alpha=8, target_modules=list(targets), init_lora_weights=False)


def _peft_model(tokenizer, dtype=torch.float32):
    from peft import get_peft_model

    model = get_peft_model(build_tiny_model(len(tokenizer), seed=3, hidden=64), _lora(1)).to(dtype).eval()
    model.add_adapter("otra", _lora(2))
    return model


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def _ids(tokenizer):
    return torch.tensor([tokenizer("una pila es una estructura de datos", add_special_tokens=False)["input_ids"]])


@pytest.mark.parametrize("dtype", [torch.float32, pytest.param(torch.bfloat16, marks=BF16)])
def test_answering_copies_give_peft_answers_for_each_adapter_and_the_base(tiny_tokenizer, dtype):
    model, ids = _peft_model(tiny_tokenizer, dtype), _ids(tiny_tokenizer)
    reference = {}
    for name in ("default", "otra"):
        model.set_adapter(name)
        reference[name] = _logits(model, ids)
    with model.disable_adapter():
        reference[None] = _logits(model, ids)
    assert not torch.allclose(reference["default"], reference[None], atol=1e-3)  # the adapter matters
    weights = AnswerWeights(model)
    tolerance = 1e-5 if dtype == torch.float32 else 0.05 * reference[None].abs().max().item()  # bf16: one rounding
    for name in ("default", None, "otra", "default"):
        assert weights.use(name)
        got = _logits(model, ids)
        assert (got - reference[name]).abs().max().item() <= tolerance, name
        others = [reference[n] for n in reference if n != name]
        assert all((got - o).abs().max().item() > tolerance for o in others), name
    swapped = [m for m in model.modules() if isinstance(m, AnsweringLinear)]
    # fp32: the 2 x 3 adapted layers; bf16: every linear layer (2 x 7) and the output layer, packed
    assert len(swapped) == (2 * 3 if dtype == torch.float32 else 2 * 7 + 1)
    assert all(m.packed == (dtype == torch.bfloat16) for m in swapped)


@pytest.mark.parametrize("dtype", [torch.float32, pytest.param(torch.bfloat16, marks=BF16)])
def test_switching_adapters_never_touches_the_base_weights(tiny_tokenizer, dtype):
    """peft's merge/unmerge would round the base a little at each switch (bf16: ~0.4% of a weight)."""
    model, ids = _peft_model(tiny_tokenizer, dtype), _ids(tiny_tokenizer)
    before = {n: p.clone() for n, p in model.named_parameters()}
    modules = [type(m) for m in model.modules()]
    reference = _logits(model, ids)
    weights = AnswerWeights(model)
    for _ in range(5):
        weights.use("otra")
        weights.use("default")
    weights.release()
    assert [type(m) for m in model.modules()] == modules
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert torch.equal(_logits(model, ids), reference)


def test_a_4bit_base_answers_through_its_dequantised_copies(tmp_path, tiny_tokenizer):
    """QLoRA runs: every 4-bit layer, adapted or not, as the matrix bitsandbytes' kernel multiplies
    by (read after its first forward has re-laid the weights out for the CPU kernel)."""
    pytest.importorskip("bitsandbytes")
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else torch.float32
    folder = save_tiny_model(tmp_path / "wide", hidden=64)
    base = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, quantization_config=BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype))
    model = get_peft_model(base, _lora(1, ("q_proj", "v_proj"))).to(dtype).eval()
    ids = _ids(tiny_tokenizer)
    reference = _logits(model, ids)  # bitsandbytes re-lays its weights out here
    weights = AnswerWeights(model)
    assert weights.use("default")
    swapped = [m for m in model.modules() if isinstance(m, AnsweringLinear)]
    assert len(swapped) == 2 * 7 + (1 if dtype == torch.bfloat16 else 0)  # the five 4-bit layers without adapter too
    got = _logits(model, ids)
    assert (got - reference).abs().max().item() <= 0.05 * reference.abs().max().item()
    weights.release()
    assert torch.equal(_logits(model, ids), reference)


def test_no_copies_where_they_would_not_fit(tiny_tokenizer, monkeypatch):
    from afinar.assistant import weights as module

    model = _peft_model(tiny_tokenizer)
    monkeypatch.setattr(module, "_available_memory", lambda: 1000)
    assert not AnswerWeights(model).use("default")
    assert not any(isinstance(m, AnsweringLinear) for m in model.modules())


def test_batcher_answers_with_each_batchs_adapter(tiny_tokenizer):
    """Each batch answers with its own adapter's tokens (peft's), the base stays as it was, and
    `release` (what Engine._load_more does before loading another adapter) puts peft's modules back."""
    from afinar.assistant.batcher import DONE, Batcher, Request

    model = _peft_model(tiny_tokenizer)
    before = {n: p.clone() for n, p in model.named_parameters()}
    settings = {"max_new_tokens": 12, "do_sample": False, "temperature": None, "top_p": None, "repetition_penalty": 1.0,
                "eos_token_id": -1, "pad_token_id": 0, "use_cache": True}
    prompt = "una pila es"
    ids = torch.tensor([tiny_tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    expected = {}
    with torch.no_grad():
        for name in ("default", "otra"):
            model.set_adapter(name)
            expected[name] = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **settings)[0, ids.shape[1]:].tolist()
    assert expected["default"] != expected["otra"]
    batcher, seen = Batcher(model), []
    original = model.generate

    def spy(**kw):
        out = original(**kw)
        seen.append(out[0, kw["input_ids"].shape[1]:].tolist())
        return out

    model.generate = spy
    for name in ("default", "otra", "default"):
        r = batcher.submit(Request(name, tiny_tokenizer, prompt, settings))
        while r.out.get() is not DONE:
            pass
        assert r.error is None and seen[-1] == expected[name], name
        assert any(isinstance(m, AnsweringLinear) for m in model.modules())
    batcher.release()
    assert not any(isinstance(m, AnsweringLinear) for m in model.modules())
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
