"""The assistant runtime: what answers a user, in `chat`, `ask`, the HTTP API and the web page.

    engine = Engine(["runs/banco-faq"])          # engine.py: base model, adapters, guards
    reply = engine.reply([{"role": "user", "content": "¿A qué hora abren?"}])

`engine.py` decides with the domain guard (afinar.index) and then generates; `batcher.py`
generates concurrent replies together; `weights.py` gives the model the matrices it answers with
on CPU (each layer's adapter merged into a copy, packed for oneDNN); `generation.py` loads a run
and holds the decoding settings; `llamacpp.py` is the llama.cpp generator (`--engine llamacpp`); `interview.py`
assembles the guided interview's prompt.
"""


def __getattr__(name: str):
    # Engine imports torch-side modules lazily; importing the package stays cheap.
    if name == "Engine":
        from afinar.assistant.engine import Engine

        return Engine
    raise AttributeError(name)


__all__ = ["Engine"]
