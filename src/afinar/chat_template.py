"""The one chat-template function used for training and for inference.

`encode_chat(tokenizer, messages)` renders a conversation with the tokenizer's chat template and
returns token ids plus labels in which every token that is not part of an assistant reply is
-100, so the loss is computed on the replies only (each reply's end-of-turn token included, so
the model learns to stop). `render_prompt` renders the same template for generation. The template
is saved with every adapter (tokenizer files), so what was trained is what is served.

Grounded prompts (`with_context`): the records an answer should state its facts from are laid out
in the system message, after the recipe's system prompt, best-ranked first, one per block:

    <system prompt>

    [1] <the record's question>
    <the record's answer>

    [2] ...

The same function renders them in training (`training/examples.py`) and at inference (the engine,
eval), so what was trained is what is served.

How the reply spans are found (works for any template that renders conversations as prefixes of
one another, which ChatML, Llama 2/3, Mistral, Phi-3 and Gemma templates all do):
  1. render messages[:i] with the generation prompt -> the text before reply i starts;
  2. render messages[:i+1] -> the text where reply i (and its end-of-turn marker) ends;
  3. tokenize the full conversation once with offsets and label the tokens inside those spans.
"""

from __future__ import annotations

from dataclasses import dataclass

from afinar.errors import AfinarError

IGNORE_INDEX = -100

# For base models that ship no chat template (phi-2, Llama 2 base, ...): ChatML-shaped text that
# ends each turn with the tokenizer's own EOS token, so no new embeddings are needed.
FALLBACK_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]

    @property
    def n_label_tokens(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE_INDEX)


def ensure_chat_template(tokenizer, template: str | None = None) -> None:
    """Give the tokenizer a chat template: the recipe's, else its own, else the fallback."""
    if template:
        tokenizer.chat_template = template
    elif not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = FALLBACK_TEMPLATE


def with_system(messages: list[dict[str, str]], system_prompt: str | None) -> list[dict[str, str]]:
    """Prepend the recipe's system prompt unless the conversation brings its own."""
    if not system_prompt or (messages and messages[0]["role"] == "system"):
        return list(messages)
    return [{"role": "system", "content": system_prompt}, *messages]


def with_context(messages: list[dict[str, str]], system_prompt: str | None,
                 context: list[tuple[str, str]] | None) -> list[dict[str, str]]:
    """The conversation with the recipe's system prompt and, when `context` (question, answer)
    records are given, those records after it in the one documented layout (module docstring)."""
    messages = with_system(messages, system_prompt)
    if not context:
        return messages
    block = "\n\n".join(f"[{i}] {q.strip()}\n{a.strip()}" for i, (q, a) in enumerate(context, 1))
    if messages and messages[0]["role"] == "system":
        head = messages[0]["content"].rstrip()
        return [{"role": "system", "content": f"{head}\n\n{block}" if head else block}, *messages[1:]]
    return [{"role": "system", "content": block}, *messages]


def _render(tokenizer, messages, add_generation_prompt: bool) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as exc:  # jinja raises TemplateError and friends for roles a template refuses
        raise AfinarError(f"the chat template cannot render this conversation: {exc}") from exc


def render_prompt(tokenizer, messages: list[dict[str, str]]) -> str:
    """Text that ends where the assistant's next reply starts (for generation)."""
    return _render(tokenizer, messages, add_generation_prompt=True)


def reply_spans(tokenizer, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the (start, end) character span of every assistant reply."""
    full = _render(tokenizer, messages, add_generation_prompt=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], add_generation_prompt=True)
        upto = _render(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if not (full.startswith(before) and full.startswith(upto) and len(upto) > len(before)):
            raise AfinarError(
                "the chat template does not render conversations as prefixes of each other, so the "
                "assistant replies cannot be located; set `chat_template` in the recipe to a plain one"
            )
        end = len(upto.rstrip("\n "))  # keep the end-of-turn token, drop the newline after it
        spans.append((len(before), end))
    return full, spans


def encode_chat(tokenizer, messages: list[dict[str, str]]) -> Encoded:
    """Token ids and labels (assistant replies only) for one conversation."""
    text, spans = reply_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = []
    span_iter = iter(spans)
    current = next(span_iter, None)
    for token_id, (start, end) in zip(enc["input_ids"], enc["offset_mapping"]):
        while current is not None and start >= current[1]:
            current = next(span_iter, None)
        inside = current is not None and start >= current[0] and end <= current[1] and end > start
        labels.append(token_id if inside else IGNORE_INDEX)
    return Encoded(list(enc["input_ids"]), labels)
