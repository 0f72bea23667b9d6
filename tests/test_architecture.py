"""The layers of the package import one way: ops -> layers -> models -> checkpoint -> engine ->
viz / detection / export / integrations / benchmarks -> cli, and no module-level cycles."""

from __future__ import annotations

import ast
from pathlib import Path

import biformer

ROOT = Path(biformer.__file__).parent
RANKS = {
    "errors": 0, "ops": 1, "layers": 2, "models": 3, "checkpoint": 4, "engine": 5,
    "viz": 6, "detection": 6, "export": 6, "export_command": 6, "integrations": 6,
    "benchmarking": 6, "bench": 6, "cli": 7, "__main__": 7,
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(("biformer", *parts))


def _imports(path: Path, top_level_only: bool) -> set[str]:
    """The ``biformer.*`` modules that ``path`` imports (relative imports resolved)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m == "biformer" or m.startswith("biformer.")}


def _rank(module: str) -> int | None:
    parts = module.split(".")
    return RANKS.get(parts[1]) if len(parts) > 1 else None


def _files() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if p != ROOT / "__init__.py")


def test_no_import_runs_back_up_the_layers():
    wrong = []
    for path in _files():
        source = _rank(_module_name(path))
        assert source is not None, f"{path} is outside the known layers: add it to RANKS"
        for target in _imports(path, top_level_only=False):
            rank = _rank(target)
            if rank is not None and rank > source:
                wrong.append(f"{_module_name(path)} imports {target}")
    assert not wrong, wrong


def test_no_module_level_import_cycles():
    modules = {_module_name(p): p for p in _files()}
    graph = {name: {t for t in _imports(path, top_level_only=True) if t in modules and t != name}
             for name, path in modules.items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*trail, node, nxt]))
            if nxt not in state:
                visit(nxt, [*trail, node])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [])
