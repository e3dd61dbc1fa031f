"""`afinar export RUN --to ollama`: the GGUF plus a Modelfile that Ollama builds with `ollama create`.

Ollama models that "never stop talking" have a TEMPLATE that does not match the chat template
they were trained with, or no stop token. Here the TEMPLATE is derived from the trained Jinja
chat template itself, not from a table of known formats:
  1. render a conversation whose contents are unique markers (system, user, assistant, user) with
     the generation prompt;
  2. cut the rendering at the markers: what surrounds each role's content is that role's wrapper,
     and what follows the last user turn is the generation prompt;
  3. write those wrappers into Ollama's Go template around .System / .Messages / .Content;
  4. `render_go_template` re-renders a conversation the way Ollama would, and `export` checks it
     equals the Jinja rendering before writing anything.
Stop tokens: the end-of-turn token and the start of the next user turn. SYSTEM: the recipe's system
prompt. PARAMETERs: the recipe's decoding settings.
"""

from __future__ import annotations

from dataclasses import dataclass

from afinar.errors import AfinarError

MARKS = {"system": "\x01SYSTEM\x01", "user1": "\x01USER1\x01", "assistant": "\x01ASSISTANT\x01", "user2": "\x01USER2\x01"}


@dataclass
class Wrappers:
    system: tuple[str, str]  # text before and after the system prompt (the first also holds any bos)
    user: tuple[str, str]
    assistant: tuple[str, str]
    generation: str  # what opens the assistant's reply when the model is to write it
    default_system: str = ""  # what the template says as system when the conversation has none


def derive_wrappers(tokenizer) -> Wrappers:
    """Each role's prefix and suffix, read off the chat template's own renderings (steps 1-2).

    With S, U1, A1, U2 unique markers: render [S, U1], [S, U1, A1], [S, U1, A1, U2] and [S, U1] with
    the generation prompt; each rendering must extend the previous one, and the extensions are
    the assistant turn, the user turn and the generation prompt.
    """
    sys_, u1, a1, u2 = ({"role": r, "content": MARKS[k]} for r, k in
                        (("system", "system"), ("user", "user1"), ("assistant", "assistant"), ("user", "user2")))
    render = lambda msgs, gen=False: tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
    two, three, four, prompt = render([sys_, u1]), render([sys_, u1, a1]), render([sys_, u1, a1, u2]), render([sys_, u1], True)
    if not (three.startswith(two) and four.startswith(three) and prompt.startswith(two)):
        raise AfinarError("the chat template rewrites earlier turns as a conversation grows; write the Modelfile's TEMPLATE by hand")
    assistant = _split(three[len(two):], MARKS["assistant"])
    user = _split(four[len(three):], MARKS["user2"])
    user_turn_1 = user[0] + MARKS["user1"] + user[1]
    if not two.endswith(user_turn_1):
        raise AfinarError("the chat template wraps the first user turn differently; write the Modelfile's TEMPLATE by hand")
    system = _split(two[: len(two) - len(user_turn_1)], MARKS["system"])
    wrappers = Wrappers(system, user, assistant, prompt[len(two):])
    alone = render([u1])  # a template may add its own system prompt when there is none
    injected = alone[: len(alone) - len(user_turn_1)] if alone.endswith(user_turn_1) else ""
    if injected.startswith(system[0]) and injected.endswith(system[1]) and len(injected) > len(system[0]) + len(system[1]):
        wrappers.default_system = injected[len(system[0]): len(injected) - len(system[1])]
    return wrappers


def _split(text: str, mark: str) -> tuple[str, str]:
    if mark not in text:
        raise AfinarError("the chat template drops part of a conversation; write the Modelfile's TEMPLATE by hand")
    before, _, after = text.partition(mark)
    return before, after


def go_template(w: Wrappers) -> str:
    """Ollama's TEMPLATE (step 3); no whitespace trimming, so every wrapper is kept as it is."""
    return (f"{{{{ if .System }}}}{_go(w.system[0])}{{{{ .System }}}}{_go(w.system[1])}{{{{ end }}}}"
            "{{ range .Messages }}"
            f"{{{{ if eq .Role \"user\" }}}}{_go(w.user[0])}{{{{ .Content }}}}{_go(w.user[1])}"
            f"{{{{ else if eq .Role \"assistant\" }}}}{_go(w.assistant[0])}{{{{ .Content }}}}{_go(w.assistant[1])}"
            "{{ end }}{{ end }}"
            f"{_go(w.generation)}")


def render_go_template(template: str, system: str, messages: list[dict[str, str]]) -> str:
    """Render an Ollama TEMPLATE as Ollama does, for the subset of Go's text/template it uses
    here (if / else if / range / end, eq, .System, .Messages, .Role, .Content, {{- -}} trimming,
    {{ "literal" }}); step 4's check runs the template text itself, not a re-derivation."""
    nodes, _ = _parse(_lex(template), 0)
    return _run(nodes, {"System": system, "Messages": messages})


def _lex(template: str) -> list:
    """Text pieces and actions, with {{- / -}} whitespace trimming applied to the text."""
    import re

    parts, pos = [], 0
    for m in re.finditer(r"{{(-?)\s*(.*?)\s*(-?)}}", template, re.S):
        text = template[pos:m.start()]
        if m.group(1):
            text = text.rstrip()
        parts.append(("text", text))
        parts.append(("action", m.group(2), bool(m.group(3))))
        pos = m.end()
    parts.append(("text", template[pos:]))
    for i, part in enumerate(parts):  # a -}} trims the whitespace that follows
        if part[0] == "action" and part[2] and i + 1 < len(parts):
            parts[i + 1] = ("text", parts[i + 1][1].lstrip())
    return parts


def _parse(parts: list, i: int, stop=("end",)) -> tuple[list, int]:
    nodes = []
    while i < len(parts):
        part = parts[i]
        i += 1
        if part[0] == "text":
            nodes.append(("text", part[1]))
            continue
        action = part[1]
        if action.split(" ")[0] in stop or action.startswith("else"):
            return nodes, i - 1
        if action.startswith(("if ", "range ")):
            body, i = _parse(parts, i)
            branches = [(action, body)]
            while parts[i][1].startswith("else"):
                cond = parts[i][1]
                body, i = _parse(parts, i + 1)
                branches.append((cond, body))
            nodes.append(("block", branches))
            i += 1  # the {{ end }}
        else:
            nodes.append(("value", action))
    return nodes, i


def _run(nodes: list, scope: dict) -> str:
    out = []
    for kind, *rest in nodes:
        if kind == "text":
            out.append(rest[0])
        elif kind == "value":
            out.append(_value(rest[0], scope))
        else:
            out.append(_block(rest[0], scope))
    return "".join(out)


def _block(branches: list, scope: dict) -> str:
    head, body = branches[0]
    if head.startswith("range "):
        return "".join(_run(body, {**scope, **{k.capitalize(): v for k, v in item.items()}}) for item in _value(head[6:], scope))
    for cond, body in branches:
        test = cond.removeprefix("else").strip().removeprefix("if").strip()
        if not test or _truth(test, scope):
            return _run(body, scope)
    return ""


def _truth(test: str, scope: dict) -> bool:
    if test.startswith("eq "):
        left, right = test[3:].split(" ", 1)
        return _value(left, scope) == _value(right, scope)
    return bool(_value(test, scope))


def _value(expr: str, scope: dict):
    import json

    expr = expr.strip()
    if expr.startswith('"'):
        return json.loads(expr)
    if expr.startswith("."):
        return scope.get(expr[1:], "")
    raise AfinarError(f"unsupported template action {{{{ {expr} }}}}")


def modelfile(gguf_name: str, tokenizer, recipe) -> str:
    """The Modelfile text; raises AfinarError if its template would not match the trained one."""
    w = derive_wrappers(tokenizer)
    probe = [{"role": "user", "content": "¿Qué es una pila?"}, {"role": "assistant", "content": "Una estructura LIFO."},
             {"role": "user", "content": "¿Y una cola?"}]
    system = recipe.system_prompt or w.default_system
    with_sys = [{"role": "system", "content": system}] if system else []
    expected = tokenizer.apply_chat_template([*with_sys, *probe], tokenize=False, add_generation_prompt=True)
    if render_go_template(go_template(w), system, probe) != expected:
        raise AfinarError("the derived Ollama TEMPLATE does not reproduce the chat template; write it by hand")
    stops = [s for s in dict.fromkeys([tokenizer.eos_token, w.user[0].strip()]) if s]
    gen = recipe.generation
    lines = [f"# Ollama Modelfile written by afinar for {recipe.name} (base: {recipe.base_model})",
             f"# ollama create {recipe.name} -f Modelfile && ollama run {recipe.name}",
             f"FROM ./{gguf_name}", "", f'TEMPLATE """{go_template(w)}"""', ""]
    if system:
        lines += [f'SYSTEM """{system}"""', ""]
    lines += [f'PARAMETER stop "{_escape(s)}"' for s in stops]
    lines += [f"PARAMETER temperature {gen.temperature:g}", f"PARAMETER top_p {gen.top_p:g}",
              f"PARAMETER repeat_penalty {gen.repetition_penalty:g}", f"PARAMETER num_predict {gen.max_new_tokens}"]
    return "\n".join(lines) + "\n"


def parse_modelfile(text: str) -> dict:
    """A small reader of the Modelfile instructions used here (FROM, TEMPLATE, SYSTEM, PARAMETER)."""
    out: dict = {"parameters": {}}
    i, lines = 0, text.splitlines()
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip() or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if rest.startswith('"""'):
            body = rest[3:]
            while not body.endswith('"""'):
                if i >= len(lines):
                    raise ValueError(f"{word}: unterminated triple-quoted value")
                body += "\n" + lines[i]
                i += 1
            rest = body[:-3]
        if word == "PARAMETER":
            key, _, value = rest.partition(" ")
            out["parameters"].setdefault(key, []).append(value.strip().strip('"'))
        else:
            out[word.lower()] = rest
    return out


def _go(text: str) -> str:
    return text.replace("{{", '{{ "{{" }}')


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _common_prefix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def _common_suffix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return a[len(a) - n:]
