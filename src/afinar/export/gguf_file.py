"""`afinar export RUN --to gguf`: a merged model written as one GGUF file with the `gguf` package.

Written for the llama family (Llama, Mistral, SmolLM: the `llama` GGUF architecture), which is
what llama.cpp and Ollama load most reliably:
  1. weights from the merged safetensors folder, renamed to GGUF's tensor names; the q and k
     projections are permuted the way llama.cpp's converter does (its rotary layout), and
     transformers' GGUF reader permutes them back;
  2. types: norms in F32; matrices in F16, BF16, Q8_0 (blocks of 32 int8 with one f16 scale), or
     Q5_0 / Q4_0 (5 or 4 bits, token embeddings kept at Q8_0);
  3. metadata: the architecture's hyper-parameters, and the tokenizer in full: vocabulary, token
     types, BPE merges, bos/eos/pad ids, the chat template, and the end-of-turn token as both
     eos and eot, so runtimes stop where the trained template ends a turn;
  4. written to a temporary name, renamed into place.
`verify_gguf` loads the file back with transformers' GGUF reader (code nobody here wrote) and
compares its greedy output and next-token choices with the merged model's.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from afinar.errors import AfinarError

SUPPORTED = ("llama", "mistral")
TYPES = ("f16", "bf16", "q8_0", "q5_0", "q4_0")
NAMES = {  # HF name (after "model.layers.N.") -> GGUF name (after "blk.N.")
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight", "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
}
TOP = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"}


def write_gguf(merged_dir: str | Path, out_file: str | Path, qtype: str = "q8_0", name: str = "afinar") -> Path:
    """Write a merged llama-family model folder as a GGUF file of type `qtype` (one of TYPES)."""
    import gguf
    from safetensors.numpy import load_file
    from transformers import AutoConfig, AutoTokenizer

    if qtype not in TYPES:
        raise AfinarError(f"GGUF type {qtype!r}: choose one of {', '.join(TYPES)}")
    merged_dir, out_file = Path(merged_dir), Path(out_file)
    config = AutoConfig.from_pretrained(merged_dir)
    if config.model_type not in SUPPORTED:
        raise AfinarError(f"GGUF export supports the llama family ({', '.join(SUPPORTED)}), not {config.model_type!r}; "
                          "export --to merged and convert it with llama.cpp's convert_hf_to_gguf.py")
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    weights = {}
    for shard in sorted(merged_dir.glob("*.safetensors")):
        weights.update(load_file(shard))
    tmp = out_file.with_name(f".{out_file.name}.tmp")
    out_file.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(tmp), "llama")
    try:
        _metadata(writer, config, qtype, name)
        _tokenizer(writer, tokenizer)
        for gguf_name, array in _tensors(weights, config):  # 1.
            _add(writer, gguf_name, array, qtype)  # 2.
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out_file)  # 4.
    finally:
        tmp.unlink(missing_ok=True)
    return out_file


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's rotary layout: within each head, interleave the two halves of the dimensions."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tensors(weights: dict[str, np.ndarray], config):
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    for hf_name, array in weights.items():
        if hf_name in TOP:
            if hf_name == "lm_head.weight" and getattr(config, "tie_word_embeddings", False):
                continue
            yield TOP[hf_name], array
            continue
        parts = hf_name.split(".")  # model.layers.N.<rest>
        if parts[:2] != ["model", "layers"] or ".".join(parts[3:]) not in NAMES:
            if "rotary_emb" in hf_name:
                continue
            raise AfinarError(f"GGUF export: no GGUF name for the tensor {hf_name!r}")
        rest = ".".join(parts[3:])
        if rest == "self_attn.q_proj.weight":
            array = _permute(array, config.num_attention_heads)
        elif rest == "self_attn.k_proj.weight":
            array = _permute(array, kv_heads)
        yield f"blk.{parts[2]}.{NAMES[rest]}", array


def _add(writer, name: str, array: np.ndarray, qtype: str) -> None:
    """Norms stay F32; matrices get `qtype` (blocks of 32 along the rows), except the token
    embeddings of 4-5 bit files, kept at Q8_0 as llama.cpp's own quantiser does."""
    import gguf

    array = array.astype(np.float32)
    if array.ndim == 1 or name.endswith("_norm.weight"):
        writer.add_tensor(name, array)
        return
    if qtype in ("q5_0", "q4_0") and name in ("token_embd.weight", "output.weight"):
        qtype = "q8_0"
    kind = getattr(gguf.GGMLQuantizationType, qtype.upper())
    if qtype == "bf16" or qtype != "f16" and array.shape[-1] % 32 == 0:
        data = gguf.quants.quantize(array, kind)
        writer.add_tensor(name, data, raw_shape=data.shape, raw_dtype=kind)
    else:
        writer.add_tensor(name, array.astype(np.float16))


def _metadata(writer, config, qtype: str, name: str) -> None:
    import gguf

    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_dimension_count(head_dim)
    theta = getattr(config, "rope_theta", None) or (getattr(config, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    writer.add_rope_freq_base(float(theta))
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(getattr(gguf.LlamaFileType, f"MOSTLY_{qtype.upper()}"))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _tokenizer(writer, tokenizer) -> None:
    """The BPE tokenizer in full (llama.cpp's 'gpt2' model) with the chat template and stop tokens."""
    import gguf

    data = json.loads(tokenizer.backend_tokenizer.to_str())
    if data["model"]["type"] != "BPE":
        raise AfinarError(f"GGUF export: only byte-level BPE tokenizers are written here (this one is {data['model']['type']})")
    vocab = {**data["model"]["vocab"], **{t["content"]: t["id"] for t in data.get("added_tokens", [])}}
    size = max(vocab.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(size)]
    for token, i in vocab.items():
        tokens[i] = token
    special = {t["id"] for t in data.get("added_tokens", []) if t.get("special")}
    types = [gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for i in range(size)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"].get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm" if "<|im_start|>" in vocab and size == 49152 else "default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for add, value in ((writer.add_bos_token_id, tokenizer.bos_token_id), (writer.add_eos_token_id, tokenizer.eos_token_id),
                       (writer.add_eot_token_id, tokenizer.eos_token_id), (writer.add_unk_token_id, tokenizer.unk_token_id),
                       (writer.add_pad_token_id, tokenizer.pad_token_id)):
        if value is not None:
            add(int(value))
    writer.add_add_bos_token(False)  # the chat template writes every special token itself
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


@dataclass
class GgufCheck:
    reader: str
    prompts: int
    greedy_tokens: int
    greedy_equal: int  # prompts whose greedy continuation equals the merged model's
    next_token_agreement: float  # teacher-forced top-1 agreement over the prompts' positions

    def describe(self) -> str:
        return (f"read back with {self.reader}: greedy output equal to the merged model's on {self.greedy_equal}/{self.prompts} "
                f"prompts ({self.greedy_tokens} tokens each); next-token agreement {self.next_token_agreement:.1%}")


def load_merged(merged_dir: Path):
    """(model, tokenizer) of a merged folder, in fp32, loaded once for both read-back checks."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(merged_dir)


def verify_gguf(gguf_file: Path, merged, tokenizer, prompts: list[str], system_prompt: str, tokens: int = 16) -> GgufCheck:
    """Load the GGUF with transformers' reader and compare it with the merged model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from afinar.chat_template import render_prompt, with_system

    back = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32).eval()
    read_tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    equal, agree, total = 0, 0, 0
    for text in prompts:
        prompt = render_prompt(tokenizer, with_system([{"role": "user", "content": text}], system_prompt))
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
        if read_tokenizer(prompt, add_special_tokens=False)["input_ids"] != ids[0].tolist():
            raise AfinarError(f"{gguf_file}: its tokenizer splits the prompt differently from the model's")
        with torch.no_grad():
            a = merged.generate(ids, max_new_tokens=tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            b = back.generate(ids, max_new_tokens=tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            la, lb = merged(a).logits.argmax(-1), back(a).logits.argmax(-1)
        equal += int(torch.equal(a, b))
        agree += int((la == lb).sum())
        total += la.numel()
    return GgufCheck("transformers' GGUF loader", len(prompts), tokens, equal, agree / max(1, total))


def verify_with_llama_cpp(gguf_file: Path, merged, tokenizer, prompts: list[str], system_prompt: str, tokens: int = 16) -> str | None:
    """Greedy text of llama.cpp (llama-cpp-python, when installed) against the merged model's;
    None when llama-cpp-python is not installed (it builds from source, ~5 min here).

    llama.cpp runs in a child process, on its plain CPU kernels: some builds crash on some CPUs
    (seen here: a segfault in its AMX kernels decoding q8_0 on an Intel Xeon with AMX, llama.cpp
    issue 20824), and a crash must become a line in the export's checks, not the end of
    `afinar export`."""
    import importlib.util
    import subprocess
    import sys

    import torch

    from afinar.chat_template import render_prompt, with_system

    if importlib.util.find_spec("llama_cpp") is None:
        return None
    rendered, ours = [], []
    for text in prompts:
        prompt = render_prompt(tokenizer, with_system([{"role": "user", "content": text}], system_prompt))
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            out = merged.generate(ids, max_new_tokens=tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        rendered.append({"prompt": prompt, "ids": ids[0].tolist()})
        ours.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    job = json.dumps({"gguf": str(gguf_file), "prompts": rendered, "tokens": tokens})
    try:
        proc = subprocess.run([sys.executable, "-c", "from afinar.export.gguf_file import _llama_cpp_child; _llama_cpp_child()"],
                              input=job, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        return "llama.cpp did not read the file back within 10 minutes (not checked with llama.cpp)"
    if proc.returncode != 0:
        how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
        return (f"llama-cpp-python crashed reading the file back ({how}): the file is written and passed the checks "
                "above; this llama.cpp build fails on this CPU (for q8_0 on CPUs with AMX see llama.cpp issue 20824), "
                "so try the file in the runtime you will use (Ollama, llama.cpp) before relying on it")
    theirs = json.loads(proc.stdout.strip().splitlines()[-1])
    if theirs["split"]:
        return "llama.cpp splits the prompt differently from the model's tokenizer"
    equal = sum(a == b for a, b in zip(ours, theirs["texts"]))
    return f"read back with llama.cpp: same tokens, greedy text equal to the merged model's on {equal}/{len(prompts)} prompts"


def _llama_cpp_child() -> None:
    """The child process of `verify_with_llama_cpp`: a job as JSON on stdin, texts as JSON on stdout."""
    import sys

    from llama_cpp import Llama

    from afinar.assistant.llamacpp import plain_cpu_buffers

    job = json.loads(sys.stdin.read())
    plain_cpu_buffers()  # a check of the file, not of llama.cpp's fastest kernels
    llm = Llama(model_path=job["gguf"], n_ctx=1024, verbose=False)
    texts, split = [], False
    for p in job["prompts"]:
        if llm.tokenize(p["prompt"].encode(), add_bos=False, special=True) != p["ids"]:
            split = True
            break
        texts.append(llm.create_completion(p["prompt"], max_tokens=job["tokens"], temperature=0.0, top_k=1,
                                           repeat_penalty=1.0)["choices"][0]["text"])
    print(json.dumps({"texts": texts, "split": split}))
