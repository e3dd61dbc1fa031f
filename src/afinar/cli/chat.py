"""The terminal front ends of the engine: the interactive chat and the guided interview.

`run_chat(engine, read, write)` is a loop over lines read with `read()` (input() in a terminal,
a list in tests): streamed answers, history kept across turns, and commands
    /reset            forget the conversation
    /adapter NAME     switch to another loaded adapter (several personalities, one base)
    /adapters         list them
    /exit             leave (Ctrl-D too)
A guard refusal or a curated (strict) answer is marked so the user sees it was not generated.
"""

from __future__ import annotations

from collections.abc import Callable

from afinar.assistant.engine import Engine, Reply
from afinar.errors import AfinarError
from afinar.assistant.interview import assemble

HELP = "commands: /reset, /adapter NAME, /adapters, /exit"


def marker(reply: Reply) -> str:
    """The visible note after a reply that the model did not generate."""
    if reply.refused:
        return f"[guard: refused, out of domain; score {reply.score}]"
    if reply.mode == "strict":
        return f"[strict: curated answer from {reply.source}; score {reply.score}]"
    if reply.sources:
        cited = "; ".join(f"{s['n']}: {s['question'][:60]}" for s in reply.sources)
        done = "replaced by the best record's answer" if reply.replaced else "check it"
        if reply.invented:
            return f"[records {cited}] [not in the records: {', '.join(reply.invented)}; {done}]"
        if reply.unsupported:
            return f"[records {cited}] [the answer does not follow its records; {done}]"
        return f"[records {cited}]"
    return ""


def run_chat(engine: Engine, read: Callable[[], str], write: Callable[[str], None], note: Callable[[str], None]) -> None:
    """Interactive chat until /exit or end of input."""
    history: list[dict[str, str]] = []
    note(f"afinar chat: adapter {engine.current} (loaded: {', '.join(engine.names)}). {HELP}")
    while True:
        try:
            line = read().strip()
        except (EOFError, KeyboardInterrupt):
            return
        if not line:
            continue
        if line.startswith("/"):
            if _command(engine, line, history, note):
                return
            continue
        history.append({"role": "user", "content": line})
        reply = _speak(engine, history, write, note)
        history.append({"role": "assistant", "content": reply.answer})


def _command(engine: Engine, line: str, history: list, note) -> bool:
    name, _, arg = line.partition(" ")
    if name in ("/exit", "/quit"):
        return True
    if name == "/reset":
        history.clear()
        note("conversation reset")
    elif name == "/adapters":
        note(", ".join(f"{n}{' (current)' if n == engine.current else ''}" for n in engine.names))
    elif name == "/adapter":
        try:
            engine.persona(arg.strip())
            engine.current = arg.strip()
            history.clear()
            note(f"adapter {engine.current}; conversation reset")
        except AfinarError as exc:
            note(str(exc))
    else:
        note(f"unknown command {name}; {HELP}")
    return False


def _speak(engine: Engine, messages: list[dict[str, str]], write, note) -> Reply:
    reply = None
    for item in engine.stream(messages):
        if isinstance(item, Reply):
            reply = item
        else:
            write(item)
    write("\n")
    if marker(reply):
        note(marker(reply))
    if reply.replaced:
        write(reply.answer + "\n")
    return reply


def run_interview(engine: Engine, read: Callable[[], str], write, note) -> Reply:
    """Ask the current adapter's interview questions, then answer the assembled prompt."""
    recipe = engine.persona().recipe
    if recipe.interview is None or not recipe.interview.questions:
        raise AfinarError(f"the recipe of {engine.current!r} declares no interview (recipe field `interview`)")
    answers = []
    for question in recipe.interview.questions:
        note(question)
        answers.append(read())
    prompt = assemble(recipe.interview.questions, answers, recipe.interview.template)
    return _speak(engine, [{"role": "user", "content": prompt}], write, note)
