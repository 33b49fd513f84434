"""The package's modules import each other without a cycle and only downwards, layer by layer (function-level
imports included, imports for type checkers only left out): each layer can be read, tested and replaced without
the ones above it."""

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


def import_lines(path: Path, mods: dict[str, Path]) -> dict[str, int]:
    """The package's modules a file imports, each with the line of its first import; `from pkg import submodule`
    counts as the submodule only."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_lines(tree)
    deps: dict[str, int] = {}
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mmdialog"):
            subs = {f"{node.module}.{a.name}" for a in node.names} & set(mods)
            names = subs if len(subs) == len(node.names) else subs | {node.module}
        elif isinstance(node, ast.Import):
            names = {a.name for a in node.names if a.name in mods}
        else:
            continue
        for name in names & set(mods):
            deps[name] = min(deps.get(name, node.lineno), node.lineno)
    return deps


def imports_of(path: Path, mods: dict[str, Path]) -> set[str]:
    """The package's modules a file imports."""
    return set(import_lines(path, mods))


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


# The layers, bottom first. A module may import from its own layer and the layers below it, never from one above.
# The name is the top-level module or package under mmdialog/ ("mmdialog" is the package's own __init__).
LAYERS: list[tuple[str, set[str]]] = [
    # errors, config schema, registries, the modality table, answers' normal form, command options (options.py)
    ("foundation", {"mmdialog", "errors", "config", "registry", "modalities", "answers", "options"}),
    ("modules", {"modules"}),
    ("parts", {"encoders", "fusion", "decoders"}),
    ("objectives", {"objectives"}),  # the losses (and the ignore label); model.forward computes the LM loss with them
    ("model", {"model"}),
    # conversations, tokenizer, processor, formats, the world: the processor writes the labels the loss skips
    # (objectives.lm.IGNORE_INDEX) and imports nothing else of the model (test below)
    ("data", {"data"}),
    ("model I/O", {"modelio"}),
    # train validates with what its caller hands it (the recipes: eval/validation.py's Validator.build)
    ("train, chat", {"train", "chat"}),
    ("eval, serve, explain, pretrain", {"eval", "serve", "explain", "pretrain"}),
    ("recipes", {"recipes"}),
    ("cli", {"cli", "__main__"}),
]
# (importer, imported) pairs allowed to point up, each with its reason. None today.
ALLOWED_UPWARD: dict[tuple[str, str], str] = {}


def top_level(module: str) -> str:
    """mmdialog.data.formats.reader -> data; mmdialog -> mmdialog."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def upward_imports(lines: dict[str, dict[str, int]], layers: list[tuple[str, set[str]]],
                   allowed=frozenset()) -> list[str]:
    """Every import from a higher layer, as "importer:line imports module (layer a -> layer b)"."""
    rank = {name: i for i, (_, names) in enumerate(layers) for name in names}
    found = []
    for importer, deps in sorted(lines.items()):
        a = rank[top_level(importer)]
        for dep, line in sorted(deps.items()):
            b = rank[top_level(dep)]
            if b > a and (importer, dep) not in allowed:
                found.append(f"{importer}:{line} imports {dep} (layer {layers[a][0]} -> {layers[b][0]})")
    return found


def test_upward_imports_are_found_with_their_line():
    layers = [("low", {"a"}), ("high", {"b"})]
    lines = {"mmdialog.a.x": {"mmdialog.b": 7}, "mmdialog.b": {"mmdialog.a.x": 3}}
    assert upward_imports(lines, layers) == ["mmdialog.a.x:7 imports mmdialog.b (layer low -> high)"]
    assert upward_imports(lines, layers, allowed={("mmdialog.a.x", "mmdialog.b")}) == []


def test_train_and_chat_sit_below_eval_and_serve():
    """The trainer or the chat session importing eval or serve (say, the validator's scorer) is an upward import."""
    lines = {"mmdialog.train.trainer": {"mmdialog.eval.teacher_forced": 5, "mmdialog.chat.session": 6,
                                        "mmdialog.modelio": 7},
             "mmdialog.chat.session": {"mmdialog.serve.pool": 8}}
    assert upward_imports(lines, LAYERS) == [
        "mmdialog.chat.session:8 imports mmdialog.serve.pool (layer train, chat -> eval, serve, explain, pretrain)",
        "mmdialog.train.trainer:5 imports mmdialog.eval.teacher_forced (layer train, chat -> eval, serve, explain, "
        "pretrain)"]


def test_every_part_of_the_package_has_a_layer():
    mods = module_names()
    placed = [name for _, names in LAYERS for name in names]
    assert len(placed) == len(set(placed)), "a name is in two layers"
    unplaced = sorted({top_level(m) for m in mods} - set(placed))
    assert not unplaced, f"give these a layer in LAYERS: {unplaced}"


def test_imports_only_point_down():
    mods = module_names()
    lines = {name: {d: n for d, n in import_lines(path, mods).items() if d != name} for name, path in mods.items()}
    assert lines["mmdialog.recipes.demo"], "the walk finds the recipes' imports"
    stale = [pair for pair in ALLOWED_UPWARD if pair[1] not in lines.get(pair[0], {})]
    assert not stale, f"ALLOWED_UPWARD names imports that are gone: {stale}"
    up = upward_imports(lines, LAYERS, allowed=set(ALLOWED_UPWARD))
    assert not up, ("imports from a higher layer (move what is imported down to a layer the importer may use):\n"
                    + "\n".join(up))


def test_data_knows_nothing_of_the_model_but_the_ignore_label():
    """data/ sits above the model but uses only the label the loss skips: a dataset, its processor and the world
    can be read, rendered and tested without building a model (and the model never imports data/)."""
    mods = module_names()
    model_stack = {"modules", "encoders", "fusion", "decoders", "objectives", "model"}
    used = {(name, dep) for name, path in mods.items() if top_level(name) == "data"
            for dep in imports_of(path, mods) if top_level(dep) in model_stack}
    assert used and {dep for _, dep in used} == {"mmdialog.objectives.lm"}, sorted(used)
    back = {(name, dep) for name, path in mods.items() if top_level(name) in model_stack
            for dep in imports_of(path, mods) if top_level(dep) == "data"}
    assert not back, sorted(back)
