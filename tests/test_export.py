"""`afinar export`: merged model, GGUF (f16, bf16, q8_0, q4_0), Ollama Modelfile and the Hub folder, as round
trips on tiny models: what is written must behave like the adapter-applied model it came from."""

import json

import pytest
import torch
from click.testing import CliRunner
from conftest import build_tiny_tokenizer, save_tiny_model
from test_train import tiny_recipe

from afinar.cli import main
from afinar.errors import AfinarError
from afinar.export import export_run
from afinar.export.ollama import derive_wrappers, go_template, modelfile, parse_modelfile, render_go_template
from afinar.training import train

CONVERSATION = [{"role": "user", "content": "¿Qué es la pila 3?"}, {"role": "assistant", "content": "Una pila 3 es LIFO."},
                {"role": "user", "content": "¿Y la cola?"}]


@pytest.fixture(scope="module")
def wide_model_dir(tmp_path_factory):
    """A tiny Llama whose matrices are wide enough (64) for Q8_0's blocks of 32."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-wide"), hidden=64)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, wide_model_dir):
    root = tmp_path_factory.mktemp("export-run")
    return train(tiny_recipe(root, wide_model_dir, "train.max_steps=3", f"train.output_dir={root / 'runs'}"), progress=False).run_dir


def test_merged_model_matches_base_plus_adapter(run_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = export_run(run_dir, "merged", tmp_path / "merged", log=lambda *a: None)
    folder = result.path
    assert (folder / "model.safetensors").exists() and "<|im_start|>" in (folder / "chat_template.jinja").read_text()
    assert not list(folder.glob("adapter_*"))  # a standalone model, no adapter files
    record = json.loads((folder / "export.json").read_text())
    assert record["check"]["relative_diff"] <= record["check"]["tolerance"]
    # independently of the export's own check: the merged model against base + adapter
    recipe_base = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(recipe_base), run_dir / "adapter").eval()
    merged = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = AutoTokenizer.from_pretrained(folder).apply_chat_template(CONVERSATION, add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if not torch.is_tensor(ids) else ids
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, reference(ids).logits, atol=1e-5, rtol=1e-4)
    lora_b = [p for n, p in reference.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora_b)  # the adapter was trained, so the check is not trivial


def test_a_merge_that_does_not_match_writes_nothing(run_dir, tmp_path, monkeypatch):
    import afinar.export.merged as merged_module

    monkeypatch.setattr(merged_module, "MERGE_TOLERANCE", -1.0)  # no merge can pass
    with pytest.raises(AfinarError, match="does not match base \\+ adapter.*nothing was written"):
        export_run(run_dir, "merged", tmp_path / "m", log=lambda *a: None)
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("qtype, matrix_type", [("f16", "F16"), ("bf16", "BF16"), ("q8_0", "Q8_0"), ("q4_0", "Q4_0")])
def test_gguf_round_trip(run_dir, tmp_path, qtype, matrix_type):
    import gguf

    result = export_run(run_dir, "gguf", tmp_path / qtype, qtype=qtype, log=lambda *a: None)
    reader = gguf.GGUFReader(result.path)
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml.t") and k != "tokenizer.ggml.merges"}
    assert fields["general.architecture"] == "llama" and "<|im_start|>" in fields["tokenizer.chat_template"]
    assert fields["tokenizer.ggml.eos_token_id"] == fields["tokenizer.ggml.eot_token_id"] == 2  # stops at <|im_end|>
    assert len(reader.fields["tokenizer.ggml.tokens"].data) == 400
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == matrix_type and types["blk.0.attn_norm.weight"] == "F32"
    record = json.loads((result.path.parent / "export.json").read_text())
    assert "read back with transformers' GGUF loader" in record["gguf_check"]
    if qtype == "f16":  # one rounding of each weight: the same greedy text as the merged model
        assert "on 3/3 prompts" in record["gguf_check"] and "agreement 100.0%" in record["gguf_check"]


def test_a_second_gguf_type_keeps_the_first(run_dir, tmp_path):
    """`--engine llamacpp` and users keep f16 and q8_0 side by side in RUN/export/gguf/."""
    first = export_run(run_dir, "gguf", tmp_path / "g", qtype="f16", log=lambda *a: None).path
    second = export_run(run_dir, "gguf", tmp_path / "g", qtype="q8_0", log=lambda *a: None).path
    assert first.exists() and second.exists() and first.parent == second.parent
    assert first.stat().st_size > second.stat().st_size


def test_gguf_refuses_other_architectures(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from afinar.export.gguf_file import write_gguf

    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=400)).save_pretrained(tmp_path / "gpt2")
    build_tiny_tokenizer().save_pretrained(tmp_path / "gpt2")
    with pytest.raises(AfinarError, match="llama family"):
        write_gguf(tmp_path / "gpt2", tmp_path / "x.gguf", "f16")
    assert not (tmp_path / "x.gguf").exists()


def test_ollama_modelfile_holds_the_trained_template(run_dir, tmp_path):
    result = export_run(run_dir, "ollama", tmp_path / "ollama", qtype="f16", log=lambda *a: None)
    parsed = parse_modelfile(result.path.read_text())
    gguf_name = parsed["from"].removeprefix("./")
    assert (result.path.parent / gguf_name).exists()
    assert parsed["system"] == "Eres tutor." and parsed["parameters"]["stop"][0] == "<|im_end|>"
    assert parsed["parameters"]["temperature"] == ["0"]  # the recipe's greedy decoding
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run_dir / "adapter")
    expected = tokenizer.apply_chat_template([{"role": "system", "content": "Eres tutor."}, *CONVERSATION], tokenize=False,
                                             add_generation_prompt=True)
    assert render_go_template(parsed["template"], "Eres tutor.", CONVERSATION) == expected


LLAMA3 = ("{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] | trim"
          " + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")


def test_ollama_template_is_derived_for_other_chat_formats():
    """Not a table of known formats: a Llama-3-style template is read off its own rendering."""
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = LLAMA3
    w = derive_wrappers(tokenizer)
    assert w.user[0] == "<|start_header_id|>user<|end_header_id|>\n\n" and w.user[1] == "<|eot_id|>"
    for system in ("Eres tutor.", ""):
        msgs = ([{"role": "system", "content": system}] if system else []) + CONVERSATION
        expected = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        if system:
            assert render_go_template(go_template(w), system, CONVERSATION) == expected


def test_go_template_renderer_trims_like_go():
    assert render_go_template('a \n{{- if .System }} x {{- .System -}} y{{ end }}', "S", []) == "a xSy"
    assert render_go_template("{{ range .Messages }}{{ if eq .Role \"user\" }}U:{{ .Content }}{{ else }}A{{ end }}{{ end }}", "",
                              CONVERSATION) == "U:¿Qué es la pila 3?AU:¿Y la cola?"


def test_hub_dry_run_writes_card_without_secrets(run_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secreto_de_prueba")
    out = CliRunner().invoke(main, ["export", str(run_dir), "--to", "hub", "--dry-run", "--repo", "ana/tutor", "--out", str(tmp_path / "hub")])
    assert out.exit_code == 0, out.output
    folder = tmp_path / "hub"
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nbase_model: ") and "library_name: peft" in card
    summary = json.loads((run_dir / "summary.json").read_text())
    assert f"{summary['best_eval_loss']:.3f}" in card and "vllm serve" in card and "ollama create" in card
    assert (folder / "adapter_model.safetensors").exists() and (folder / "afinar_recipe.yaml").exists()
    for path in folder.rglob("*"):
        if path.is_file() and path.suffix != ".safetensors":
            assert "hf_secreto_de_prueba" not in path.read_text(errors="ignore"), path
    assert str(run_dir.parent.parent) not in (folder / "afinar_recipe.yaml").read_text()  # no local paths


def test_hub_push_needs_a_repo_and_a_token(run_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(AfinarError, match="--repo"):
        export_run(run_dir, "hub", tmp_path / "a", log=lambda *a: None)
    with pytest.raises(AfinarError, match="HF_TOKEN"):
        export_run(run_dir, "hub", tmp_path / "b", repo="ana/tutor", log=lambda *a: None)


def test_export_cli_says_what_it_verified(run_dir, tmp_path):
    out = CliRunner().invoke(main, ["export", str(run_dir), "--to", "merged", "--out", str(tmp_path / "m")])
    assert out.exit_code == 0, out.output
    assert "verified: merged logits match base + adapter" in out.output
    bad = CliRunner().invoke(main, ["export", str(tmp_path / "nada"), "--to", "merged"])
    assert bad.exit_code == 1 and "no trained adapter" in bad.output and "Traceback" not in bad.output


def test_gguf_read_back_by_llama_cpp(run_dir, tmp_path):
    """A reader nobody here wrote: llama.cpp itself (llama-cpp-python, optional: it builds from source)."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install llama-cpp-python; ~5 min build)")
    result = export_run(run_dir, "gguf", tmp_path / "g", qtype="f16", log=lambda *a: None)
    line = next(c for c in result.checks if "llama.cpp" in c)
    assert "same tokens, greedy text equal to the merged model's on 3/3 prompts" in line, line


def test_qlora_run_is_merged_into_the_dequantised_base(tmp_path, wide_model_dir):
    """QLoRA: the adapter goes into fp32 weights, not into the 4-bit ones."""
    from safetensors.torch import load_file

    run = train(tiny_recipe(tmp_path, wide_model_dir, "quantization=nf4", "train.max_steps=2",
                            f"train.output_dir={tmp_path / 'runs'}"), progress=False).run_dir
    said = []
    result = export_run(run, "merged", tmp_path / "merged", log=said.append)
    assert any("dequantised base" in s for s in said) and "same greedy next token everywhere: True" in result.checks[0]
    weights = load_file(result.path / "model.safetensors")
    assert all(w.dtype == torch.float32 for w in weights.values())  # no 4-bit packed tensors
    assert not any("quant" in k or "absmax" in k for k in weights)
    assert "quantization_config" not in json.loads((result.path / "config.json").read_text())


def test_a_llama_cpp_that_crashes_reading_the_gguf_back_is_a_check_line_not_a_crash(tmp_path, monkeypatch):
    """llama.cpp runs in a child process: its segfault (AMX kernels, q8_0) is reported, export goes on."""
    import importlib.util
    import subprocess

    from conftest import build_tiny_model

    from afinar.export import gguf_file

    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(len(tokenizer)).eval()
    real_find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "llama_cpp" else real_find(name, *a))
    jobs = []

    def crashed(argv, input, **kw):
        jobs.append(json.loads(input))
        return subprocess.CompletedProcess(argv, -11, "", "Segmentation fault")

    monkeypatch.setattr(subprocess, "run", crashed)
    line = gguf_file.verify_with_llama_cpp(tmp_path / "m.gguf", model, tokenizer, ["una pila"], "Sé breve.", tokens=4)
    assert "crashed reading the file back (signal 11)" in line and "issue 20824" in line
    assert jobs[0]["gguf"].endswith("m.gguf") and jobs[0]["prompts"][0]["ids"]  # the child gets the rendered prompt
