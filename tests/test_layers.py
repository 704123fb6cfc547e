"""The package's import structure: lower layers never import higher ones, and no modules import in a circle.

Function-local imports count too: they hide a dependency from a reader but not from Python.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "speechllm"

# Lowest first. A module may import its own layer or lower ones.
LAYERS: list[tuple[str, ...]] = [
    ("config", "digests", "attributes", "audio", "parsing", "safety", "packaged", "sources", "tiny"),
    ("textllm", "model", "describe", "corpus"),
    ("data",),
    ("train", "eval"),
    ("errors", "ask", "cli", "steps", "demo", "study"),
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that a file imports (anywhere in it)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != "speechllm":
                found.add(name)
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {m: _imports(p, set(files)) - {m} for m, p in files.items() if m != "speechllm"}


def _layer(module: str) -> int:
    top = module.split(".")[1]
    return next((i for i, names in enumerate(LAYERS) if top in names), -1)


def test_every_module_has_a_layer():
    assert [m for m in _graph() if _layer(m) < 0] == []


def test_no_module_imports_a_higher_layer():
    upward = [f"{m} -> {d}" for m, deps in _graph().items() for d in deps if _layer(d) > _layer(m)]
    assert upward == []


def test_no_import_circles():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in sorted(graph.get(module, ())):
            if state.get(dep) == 1:
                circles.append(" -> ".join(path[path.index(dep) :] + [dep]))
            elif dep not in state:
                visit(dep, [*path, dep])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert circles == []
