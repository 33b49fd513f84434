"""The package's modules import each other without a cycle (function-level imports included, imports for type
checkers only left out): each layer can be read, tested and replaced without the ones above it."""

import ast
from pathlib import Path

import mmdialog

ROOT = Path(mmdialog.__file__).resolve().parent


def module_names() -> dict[str, Path]:
    mods = {}
    for p in ROOT.rglob("*.py"):
        parts = ("mmdialog", *p.relative_to(ROOT).with_suffix("").parts)
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return mods


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports_of(path: Path, mods: dict[str, Path]) -> set[str]:
    """The package's modules a file imports; `from pkg import submodule` counts as the submodule only."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_lines(tree)
    deps = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mmdialog"):
            subs = {f"{node.module}.{a.name}" for a in node.names} & set(mods)
            deps |= subs if len(subs) == len(node.names) else subs | {node.module}
        elif isinstance(node, ast.Import):
            deps |= {a.name for a in node.names if a.name in mods}
    return deps & set(mods)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state, stack = {}, []

    def visit(v):
        state[v] = "open"
        stack.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == "open":
                return stack[stack.index(w):] + [w]
            if w not in state and (c := visit(w)):
                return c
        state[v] = "done"
        stack.pop()
        return None

    for v in sorted(graph):
        if v not in state and (c := visit(v)):
            return c
    return None


def test_find_cycle_finds_one_and_only_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_package_has_no_import_cycle():
    mods = module_names()
    assert len(mods) > 50 and "mmdialog.cli" in mods
    graph = {name: imports_of(path, mods) - {name} for name, path in mods.items()}
    assert graph["mmdialog.cli"], "the walk finds the CLI's imports"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
