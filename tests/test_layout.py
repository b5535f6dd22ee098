"""The package's layout keeps its shape: no import cycles, visplay modules imported at the top of
files (the few lazy ones marked), stage names spelled only by the run floor, a small config.py.

Reads the source with `ast`, imports nothing it checks. Run: `pytest -q tests/test_layout.py`.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import visplay

PACKAGE = Path(visplay.__file__).parent
#: A stage name written out by hand: ``f"iter{t}/..."`` or ``"iter1/..."`` in code (docstrings aside).
STAGE_SPELLING = re.compile(r"iter(\{[^}]*\}|\d+)/")


def modules() -> dict[str, tuple[Path, ast.Module]]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        out[name] = (path, ast.parse(path.read_text()))
    return out


def _imported(node: ast.Import | ast.ImportFrom, known) -> list[str]:
    """The visplay modules an import statement loads (``from pkg import module`` names the module)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif node.level or not node.module:
        names = []
    else:
        names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module for a in node.names]
    return [n for n in names if n.split(".")[0] == "visplay"]


def _walk(tree: ast.AST, in_function: bool = False):
    """(import node, inside a function?) for every import, `if TYPE_CHECKING:` blocks left out."""
    for child in ast.iter_child_nodes(tree):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, in_function
        elif isinstance(child, ast.If) and getattr(child.test, "id", None) == "TYPE_CHECKING":
            continue
        else:
            yield from _walk(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))


def test_no_import_cycles_among_module_level_imports():
    mods = modules()
    graph: dict[str, set[str]] = {name: set() for name in mods}
    for name, (_, tree) in mods.items():
        for node, lazy in _walk(tree):
            for target in _imported(node, mods) if not lazy else []:
                parts = target.split(".")
                for i in range(2, len(parts) + 1):  # importing a.b.c runs a.b's __init__ first (unless inside a.b)
                    package = ".".join(parts[:i])
                    if package in mods and package != name and not name.startswith(package + "."):
                        graph[name].add(package)
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            assert state.get(nxt) != 1, f"import cycle: {' -> '.join(path + [node, nxt])}"
            if nxt not in state:
                visit(nxt, path + [node])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


def test_visplay_modules_are_imported_at_the_top_with_few_marked_exceptions():
    mods = modules()
    lazy = []
    for path, tree in mods.values():
        lines = path.read_text().splitlines()
        lazy += [(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}", lines[node.lineno - 1], lines[node.lineno - 2])
                 for node, inside in _walk(tree) if inside and _imported(node, mods)]
    assert len(lazy) <= 20, lazy
    unmarked = [where for where, line, above in lazy if "#" not in line and not above.strip().startswith("#")]
    assert not unmarked, f"a function-level import of a visplay module says why, in a comment: {unmarked}"


def test_only_the_run_floor_spells_stage_names():
    found = set()
    for name, (path, tree) in modules().items():
        if name.startswith("visplay.run."):
            continue
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        source = path.read_text()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Constant, ast.JoinedStr)) and id(node) not in docstrings:
                text = ast.get_source_segment(source, node) or ""
                if STAGE_SPELLING.search(text):
                    found.add(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {text}")
    assert not found, "stage names come from visplay.run.stages (stage_name, split_stage, ...):\n" + "\n".join(sorted(found))


def test_config_py_is_the_tree_and_loader_only():
    assert len((PACKAGE / "config.py").read_text().splitlines()) <= 350
