"""afinar: turn a small domain dataset into a trustworthy domain assistant.

The pipeline, one package per stage, with the recipe and the CLI on top:
    data (check, prepare) -> training -> evaluation -> assistant (chat, ask) -> serving / export
`index` holds the domain's records and the guard that every answer passes first. Each stage is a
plain function usable from Python; `afinar.cli` maps commands onto them. The entry points are
importable from here as well (lazily, so `import afinar` stays cheap):

    from afinar import load_recipe, train, evaluate, Engine
"""

__version__ = "0.1.0"

_ENTRY_POINTS = {"load_recipe": "afinar.recipes", "train": "afinar.training", "evaluate": "afinar.evaluation",
                 "Engine": "afinar.assistant.engine", "check_data": "afinar.data", "prepare_data": "afinar.data",
                 "export_run": "afinar.export"}


def __getattr__(name: str):
    if name in _ENTRY_POINTS:
        import importlib

        return getattr(importlib.import_module(_ENTRY_POINTS[name]), name)
    raise AttributeError(f"module 'afinar' has no attribute {name!r}")


import logging as _logging

# bitsandbytes (CPU backend) tries to fetch an optional kernel from the Hugging Face hub through
# the `kernels` package and logs a warning when it cannot. afinar never downloads at run time,
# and the built-in kernel it falls back to is the one we measure, so the warning is only noise.
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)

import warnings as _warnings

# peft calls transformers' deprecated `is_gradient_checkpointing` on every model it wraps; the
# FutureWarning is addressed to peft, not to afinar's users.
_warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
