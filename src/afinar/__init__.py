"""afinar: turn a small domain dataset into a trustworthy domain assistant.

The pipeline, one module (or package) per stage:
    data (check, prepare) -> train -> eval -> chat / ask / serve / export
Each stage is a plain function usable from Python; `afinar.cli` maps commands onto them.
"""

__version__ = "0.1.0"

import logging as _logging

# bitsandbytes (CPU backend) tries to fetch an optional kernel from the Hugging Face hub through
# the `kernels` package and logs a warning when it cannot. afinar never downloads at run time,
# and the built-in kernel it falls back to is the one we measure, so the warning is only noise.
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)

import warnings as _warnings

# peft calls transformers' deprecated `is_gradient_checkpointing` on every model it wraps; the
# FutureWarning is addressed to peft, not to afinar's users.
_warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
