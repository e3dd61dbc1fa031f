"""The tree reads as the pipeline: no import circles between modules, no file over 400 lines.

Regression test for issue 16: `training/runtime.py` <-> `doctor.py`, `serving/api.py` <->
`serving/web.py` and `evaluation/report.py` <-> `evaluation/html.py` imported each other.
"""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "afinar"
TOP_LEVEL = {"__init__.py", "errors.py", "io.py", "chat_template.py", "models.py"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, known: set[str]) -> set[str]:
    """Every afinar module `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("afinar"):
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("afinar")]
        found |= {n for n in names if n in known}
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in SRC.rglob("*.py")}
    return {name: _imports(path, set(files)) - {name} for name, path in files.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def _is_package_reexport(a: str, b: str) -> bool:
    """A package's __init__ re-exporting its own submodule is not a circle a reader trips on."""
    return b.startswith(a + ".") or a.startswith(b + ".")


def test_no_module_imports_a_module_that_imports_it_back():
    graph = _graph()
    pruned = {v: {w for w in ws if not _is_package_reexport(v, w)} for v, ws in graph.items()}
    assert _cycles(pruned) == []


def test_the_cycle_finder_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]


def test_every_source_file_is_under_400_lines():
    long = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}


def test_the_top_level_holds_only_what_every_stage_uses():
    assert {p.name for p in SRC.glob("*.py")} == TOP_LEVEL
    stages = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert stages == {"recipes", "data", "training", "evaluation", "assistant", "index", "serving", "export", "cli"}


def test_entry_points_import_from_afinar():
    import afinar
    from afinar.assistant.engine import Engine
    from afinar.evaluation import evaluate
    from afinar.training import train

    assert (afinar.train, afinar.evaluate, afinar.Engine) == (train, evaluate, Engine)
