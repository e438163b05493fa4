"""The package layout holds: no import cycles, small modules, kernels reached by public names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "hyperret"
MAX_LINES = 450


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _top_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports run when the module loads: module level, outside ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found.append(node)
            elif isinstance(node, ast.If):
                if not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)

    visit(tree.body)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _top_level_imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                graph[name].update(a.name for a in node.names if a.name in mods)
                continue
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target not in mods:
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                graph[name].add(sub if sub in mods else target)
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a path ``[a, ..., a]``, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (found := dfs(n)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := dfs(m)):
            return found
    return None


def test_no_import_cycles():
    cycle = _find_cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_check_can_fail():
    graph = _graph()
    assert "hyperret.search.exact" in graph["hyperret.search.executor"]  # relative imports resolve
    assert "hyperret.search.rerank" in graph["hyperret.search.exact"]
    assert "hyperret.kernels.distance" in graph["hyperret.search.rerank"]
    graph["hyperret.kernels.distance"].add("hyperret.search.executor")
    cycle = _find_cycle(graph)
    assert cycle is not None
    assert ("hyperret.kernels.distance", "hyperret.search.executor") in set(zip(cycle, cycle[1:]))


@pytest.mark.parametrize("name", sorted(_modules()))
def test_modules_stay_small(name):
    lines = len(_modules()[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines (at most {MAX_LINES}): split it by job"


def test_no_private_imports_across_modules():
    """Modules share kernels and helpers by public names, not each other's underscored ones."""
    mods = _modules()
    offenders = []
    for name, path in mods.items():
        for node in _top_level_imports(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                offenders += [f"{name}: from {'.' * node.level}{node.module or ''} import {a.name}"
                              for a in node.names if a.name.startswith("_") and a.name != "__version__"]
    assert not offenders, "\n".join(offenders)


def test_public_names_resolve_without_torch():
    """Every name in ``hyperret.__all__`` resolves; the vector path loads no torch (the encoder is lazy)."""
    import subprocess
    import sys

    code = ("import sys, hyperret\n"
            "missing = [n for n in hyperret.__all__ if n not in ('HySACEncoder', 'CLIPEncoder', 'load_encoder')"
            " and getattr(hyperret, n, None) is None]\n"
            "assert not missing, missing\n"
            "assert 'torch' not in sys.modules, 'the vector path imported torch'\n"
            "assert 'hyperret.cuda' not in sys.modules, 'the CPU path imported the GPU path'\n"
            "assert callable(hyperret.load_encoder) and hyperret.DedupResult.__name__ == 'DedupResult'\n")
    subprocess.run([sys.executable, "-c", code], check=True)
