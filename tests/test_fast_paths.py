"""The speed paths: compiled decoder layers for training, llama.cpp as the engine's generator."""

import threading

import pytest
import torch
from conftest import build_tiny_model
from test_runtime import runs  # noqa: F401 (fixture: two tiny trained runs)
from test_train import tiny_recipe

from afinar.assistant.engine import Engine
from afinar.errors import AfinarError
from afinar.assistant.llamacpp import LlamaCppGenerator
from afinar.training import compiled
from afinar.training.runtime import decide_compile, resolve_setup


def _lora_model(tmp_path, tiny_model_dir, *overrides):
    from afinar.training.lora import attach_lora, load_base

    recipe = tiny_recipe(tmp_path, tiny_model_dir, *overrides)
    return recipe, attach_lora(load_base(recipe, torch.float32, "cpu"), recipe, False, log=lambda *a: None)


def test_compile_auto_waits_for_a_run_long_enough_to_repay_it(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setattr(compiled, "compiler_available", lambda: True)
    recipe, model = _lora_model(tmp_path, tiny_model_dir)
    setup = resolve_setup(recipe)
    assert not decide_compile(recipe, setup, model, train_tokens=compiled.WARM_COMPILE_MIN_TOKENS)  # cold cache
    assert decide_compile(recipe, setup, model, train_tokens=compiled.COLD_COMPILE_MIN_TOKENS)
    compiled.mark_warm(model)  # a compiled run has filled the cache for this model
    assert compiled.cache_is_warm(model)
    assert decide_compile(recipe, setup, model, train_tokens=compiled.WARM_COMPILE_MIN_TOKENS)
    assert not decide_compile(recipe, setup, model, train_tokens=compiled.WARM_COMPILE_MIN_TOKENS - 1)
    other = build_tiny_model(model.config.vocab_size, hidden=32)  # another shape: its own stamp
    assert not compiled.cache_is_warm(other)


def test_compile_settings_say_why_not(tmp_path, tiny_model_dir, monkeypatch):
    recipe, model = _lora_model(tmp_path, tiny_model_dir, "train.compile=off")
    assert not decide_compile(recipe, resolve_setup(recipe), model, train_tokens=10**9)
    monkeypatch.setattr(compiled, "compiler_available", lambda: False)
    recipe, model = _lora_model(tmp_path, tiny_model_dir, "train.compile=on")
    with pytest.raises(AfinarError, match="train.compile: on, but no C\\+\\+ compiler was found"):
        decide_compile(recipe, resolve_setup(recipe), model, train_tokens=10)
    recipe, model = _lora_model(tmp_path, tiny_model_dir)
    assert not decide_compile(recipe, resolve_setup(recipe), model, train_tokens=10**9)  # auto: quietly eager


@pytest.mark.skipif(not compiled.compiler_available(), reason="inductor needs a C++ compiler (g++)")
def test_compiled_layers_compute_the_same_loss_and_gradients(tmp_path, tiny_model_dir):
    from afinar.training.loss import AnswerOnlyLM

    recipe, eager = _lora_model(tmp_path, tiny_model_dir, "lora.dropout=0")
    _, fast = _lora_model(tmp_path, tiny_model_dir, "lora.dropout=0")
    fast.load_state_dict(eager.state_dict())
    assert compiled.compile_layers(fast) == len(compiled.decoder_layers(eager))
    assert compiled.inductor_cache().is_relative_to(tmp_path)  # the isolated test home, not the user's cache
    for length in (7, 12):  # dynamic shapes: one graph for every length
        ids = torch.randint(3, 300, (2, length))
        labels = ids.clone()
        labels[:, : length // 2] = -100
        losses = []
        for model in (eager, fast):
            model.zero_grad()
            loss = AnswerOnlyLM(model)(input_ids=ids, labels=labels)
            loss.backward()
            grad = next(p.grad for n, p in model.named_parameters() if "lora_B" in n)
            losses.append((loss.detach(), grad.clone()))
        assert torch.allclose(losses[0][0], losses[1][0], rtol=1e-4), (losses[0][0], losses[1][0])
        assert torch.allclose(losses[0][1], losses[1][1], rtol=1e-3, atol=1e-6)


def test_training_runs_with_compile_on(tmp_path, tiny_model_dir):
    from afinar.training import train

    if not compiled.compiler_available():
        pytest.skip("inductor needs a C++ compiler (g++)")
    recipe = tiny_recipe(tmp_path, tiny_model_dir, "train.compile=on", "train.max_steps=2")
    result = train(recipe, progress=False, log=lambda *a, **k: None)
    assert result.steps == 2 and result.final_train_loss == result.final_train_loss  # finite, not NaN
    assert (result.adapter_dir / "adapter_model.safetensors").exists()
    from peft import PeftModel  # the saved adapter carries no compile wrappers in its keys

    from afinar.training.lora import load_base

    PeftModel.from_pretrained(load_base(recipe, torch.float32, "cpu"), str(result.adapter_dir))


class _FakeLlama:
    """Stands in for llama_cpp.Llama: proposes `script` token by token, unless a logits processor
    forbids a token (then the next allowed one in `fallback`)."""

    def __init__(self, script, fallback=7):
        self.script, self.fallback, self.calls = script, fallback, []

    def generate(self, ids, reset=True, logits_processor=None, **options):
        self.calls.append({"ids": list(ids), **options})
        for token in self.script:
            logits = [0.0] * 10
            logits[token] = 1.0
            for proc in logits_processor or []:
                logits = proc(None, logits)
            yield token if logits[token] > float("-inf") else self.fallback


def _generator(script):
    g = LlamaCppGenerator.__new__(LlamaCppGenerator)
    g.llm, g.lock = _FakeLlama(script), threading.Lock()
    return g


class _Tok:
    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [1, 2, 3]}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(ord("a") + i) for i in ids)


def _settings(**extra):
    return {"max_new_tokens": 5, "do_sample": False, "temperature": None, "top_p": None, "repetition_penalty": 1.1,
            "eos_token_id": 2, **extra}


def test_llamacpp_generator_stops_at_end_of_turn_and_at_the_limit():
    counts = {}
    g = _generator([4, 5, 2, 6])
    assert "".join(g.stream(_Tok(), "p", _settings(), None, counts)) == "ef"
    assert counts == {"prompt": 3, "new": 3, "truncated": False}  # the end of turn counts as generated
    assert g.llm.calls[0]["ids"] == [1, 2, 3] and g.llm.calls[0]["top_k"] == 1 and g.llm.calls[0]["repeat_penalty"] == 1.1
    counts = {}
    assert "".join(_generator([4] * 9).stream(_Tok(), "p", _settings(), None, counts)) == "eeeee"
    assert counts["new"] == 5 and counts["truncated"]


def test_llamacpp_generator_holds_back_the_end_and_honours_cancel():
    counts = {}
    text = "".join(_generator([4, 2, 2, 5, 2]).stream(_Tok(), "p", _settings(min_new_tokens=3), None, counts))
    assert text == "ehhf" and counts["new"] == 5  # two ends of turn replaced, the third one (after 4 tokens) kept
    cancel = threading.Event()
    cancel.set()
    assert "".join(_generator([4, 5, 6]).stream(_Tok(), "p", _settings(), cancel, {})) == "e"


def test_engine_names_its_backends(runs):  # noqa: F811
    with pytest.raises(AfinarError, match="engine 'onnx': choose one of auto, torch, llamacpp"):
        Engine([runs[0]], backend="onnx")


def test_llamacpp_engine_explains_a_missing_llama_cpp(runs, monkeypatch):  # noqa: F811
    import builtins

    real = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name))
                        if name == "llama_cpp" else real(name, *a, **k))
    with pytest.raises(AfinarError, match="needs llama-cpp-python: pip install llama-cpp-python"):
        Engine([runs[0]], backend="llamacpp", mode="off")


def test_auto_engine_is_torch_without_llama_cpp_and_says_how_to_get_it(runs, monkeypatch):  # noqa: F811
    import builtins

    real = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name))
                        if name == "llama_cpp" else real(name, *a, **k))
    notes = []
    engine = Engine([runs[0]], mode="off", backend="auto", log=notes.append)  # chat's and ask's default
    assert engine.backend == "torch" and engine.model is not None
    assert any("pip install llama-cpp-python" in n for n in notes)


def test_auto_engine_falls_back_to_torch_where_llama_cpp_cannot_run_the_run(runs, monkeypatch):  # noqa: F811
    import sys
    import types

    import afinar.assistant.llamacpp as llamacpp

    def no_gguf(*a, **k):
        raise AfinarError("this architecture has no GGUF converter")

    monkeypatch.setitem(sys.modules, "llama_cpp", types.ModuleType("llama_cpp"))
    monkeypatch.setattr(llamacpp, "LlamaCppGenerator", no_gguf)
    notes = []
    engine = Engine([runs[0]], mode="off", backend="auto", log=notes.append)
    assert engine.backend == "torch" and not engine._llama and len(engine.names) == 1
    assert any("no GGUF converter" in n for n in notes)
    assert engine.reply([{"role": "user", "content": "¿Qué es una pila?"}], max_new_tokens=4).tokens > 0
    with pytest.raises(AfinarError, match="no GGUF converter"):  # asked for by name: no silent fallback
        Engine([runs[0]], mode="off", backend="llamacpp", log=notes.append)


def test_torch_engine_holds_back_the_end_of_turn(runs):  # noqa: F811
    engine = Engine([runs[0]], mode="off")
    reply = engine.reply([{"role": "user", "content": "¿Qué es una pila?"}], max_new_tokens=12, min_new_tokens=12)
    assert reply.tokens == 12 and reply.truncated


def test_llamacpp_engine_answers_like_the_torch_engine(runs):  # noqa: F811
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install llama-cpp-python; ~5 min build)")
    question = [{"role": "user", "content": "¿Qué es una pila?"}]
    fast = Engine([runs[0]], mode="off", backend="llamacpp", log=lambda *a: None)
    assert (runs[0] / "export" / "gguf").is_dir()
    reply = fast.reply(question, max_new_tokens=8, min_new_tokens=8)
    assert reply.tokens == 8 and reply.prompt_tokens > 0 and fast.context_length > 0


def test_skipping_the_adapters_input_cast_changes_no_number(tmp_path, tiny_model_dir):
    """Under bf16 autocast peft's cast to fp32 is undone by autocast at once: skipping it is free."""
    from afinar.training.lora import keep_input_dtype
    from afinar.training.lora import attach_lora, load_base
    from afinar.training.loss import AnswerOnlyLM

    recipe = tiny_recipe(tmp_path, tiny_model_dir, "lora.dropout=0")
    model = attach_lora(load_base(recipe, torch.bfloat16, "cpu"), recipe, False, log=lambda *a: None)
    for _, p in model.named_parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.1)  # adapters that do something
    ids = torch.randint(3, 300, (2, 9))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        before = AnswerOnlyLM(model)(input_ids=ids, labels=ids)
        keep_input_dtype(model)
        after = AnswerOnlyLM(model)(input_ids=ids, labels=ids)
    assert next(p for p in model.parameters() if p.requires_grad).dtype == torch.float32  # adapters stay fp32
    assert torch.equal(before, after)


def test_compile_counts_only_the_tokens_a_run_will_train(tmp_path, tiny_model_dir):
    from types import SimpleNamespace

    from afinar.training.examples import tokens_to_train

    examples = [SimpleNamespace(input_ids=[0] * 10)] * 8  # 2 steps per epoch at batch 4
    assert tokens_to_train(tiny_recipe(tmp_path, tiny_model_dir, "train.epochs=3"), examples) == 240
    assert tokens_to_train(tiny_recipe(tmp_path, tiny_model_dir, "train.epochs=3", "train.max_steps=1"), examples) == 40


def test_the_guard_runs_in_a_thread_that_ends_with_it(runs):  # noqa: F811
    """The embedder's OpenMP team must not outlive the decision (it slowed generation 30 -> 20 tokens/s)."""
    engine = Engine([runs[0]], mode="refuse")
    guard = engine.persona().guard
    seen = []
    real = guard.check
    guard.check = lambda *a: seen.append(threading.current_thread()) or real(*a)
    engine.decide([{"role": "user", "content": "¿Qué es una pila?"}])
    assert seen and seen[0] is not threading.current_thread() and not seen[0].is_alive()
    guard.check = lambda *a: (_ for _ in ()).throw(RuntimeError("roto"))
    with pytest.raises(RuntimeError, match="roto"):  # the guard's errors still reach the caller
        engine.decide([{"role": "user", "content": "¿Qué es una pila?"}])


def test_greedy_generation_drops_ended_rows_and_gives_generates_tokens(tiny_model_dir, tiny_tokenizer):
    """The eval's greedy loop (assistant/generation.py) against transformers' generate(): the same
    tokens for every row of a left-padded batch, with the repetition penalty, when rows end at
    different steps (the path that drops them from the batch and the cache)."""
    from collections import Counter

    from transformers import AutoModelForCausalLM

    from afinar.assistant.generation import greedy_generate
    from afinar.models import left_padded

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    prompts = ["hola", "una pila es una estructura de datos", "cola", "¿qué es un árbol binario de búsqueda?", "x y z"]
    inputs = left_padded(tiny_tokenizer, prompts)
    never = greedy_generate(model, inputs["input_ids"], inputs["attention_mask"], 16, -1, 1.1)
    # an end token that some rows produce early and others late or never
    eos = Counter(t for row in never for t in set(row[2:12])).most_common(1)[0][0]
    ours = greedy_generate(model, inputs["input_ids"], inputs["attention_mask"], 16, eos, 1.1)
    ref = model.generate(**inputs, max_new_tokens=16, do_sample=False, repetition_penalty=1.1, eos_token_id=eos,
                         pad_token_id=tiny_tokenizer.pad_token_id)[:, inputs["input_ids"].shape[1]:].tolist()
    ref = [row[: row.index(eos)] if eos in row else row for row in ref]
    assert ours == ref
    assert len({len(row) for row in ours}) > 1  # rows did end at different steps


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_growing_kv_cache_computes_what_transformers_dynamic_cache_does(tiny_tokenizer, dtype):
    """Step by step, with room for one token only (so it regrows) and a row dropped on the way,
    afinar's in-place cache gives logits equal to DynamicCache's (torch.cat), bit for bit."""
    from transformers import DynamicCache

    from afinar.assistant.generation import cache_keyword, growing_cache
    from afinar.models import left_padded

    model = build_tiny_model(len(tiny_tokenizer), seed=5).to(dtype).eval()
    inputs = left_padded(tiny_tokenizer, ["hola", "una pila es una estructura de datos", "¿qué es un árbol?"])
    key = cache_keyword(model)

    def decode(cache) -> list[torch.Tensor]:
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)
        out = []
        with torch.no_grad():
            for step in range(6):
                logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                               **{key: cache}).logits[:, -1]
                out.append(logits)
                ids = logits.argmax(-1)[:, None]
                if step == 2:  # the middle row ends: dropped from the batch and the cache
                    keep = torch.tensor([0, 2])
                    cache.batch_select_indices(keep)
                    ids, mask, positions = ids[keep], mask[keep], positions[keep]
                mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
                positions = positions[:, -1:] + 1
        return out

    ours, theirs = decode(growing_cache(1)), decode(DynamicCache())
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
    assert ours[-1].shape[0] == 2


def test_adapters_answer_in_the_base_models_dtype(tmp_path, tiny_tokenizer):
    """Loaded for answering, an adapter on a bf16 base is bf16 too (peft would keep it fp32 and cast
    every adapted layer's input: the prefill then took 1.85x as long on the demo run)."""
    from peft import LoraConfig, PeftModel, get_peft_model

    from afinar.models import ADAPTER_FOR_INFERENCE

    base = build_tiny_model(len(tiny_tokenizer), seed=1)
    get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(tmp_path / "a")
    bf16 = build_tiny_model(len(tiny_tokenizer), seed=1).to(torch.bfloat16)
    model = PeftModel.from_pretrained(bf16, tmp_path / "a", **ADAPTER_FOR_INFERENCE)
    model.load_adapter(str(tmp_path / "a"), adapter_name="second", **ADAPTER_FOR_INFERENCE)
    assert {p.dtype for n, p in model.named_parameters() if "lora_" in n} == {torch.bfloat16}
    assert {p.dtype for n, p in PeftModel.from_pretrained(build_tiny_model(len(tiny_tokenizer), seed=1).to(torch.bfloat16),
                                                          tmp_path / "a").named_parameters() if "lora_" in n} == {torch.float32}
