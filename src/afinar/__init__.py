"""afinar: turn a small domain dataset into a trustworthy domain assistant.

The pipeline, one module (or package) per stage:
    data (check, prepare) -> train -> eval -> chat / ask / serve / export
Each stage is a plain function usable from Python; `afinar.cli` maps commands onto them.
"""

__version__ = "0.1.0"
