"""The options each command declares (mmdialog/options.py dataclasses in mmdialog/cli.py) are
exactly their parsers' flags, parse to their declared defaults, and reach the functions that do the work with
those functions' own defaults. (tests/integration/test_cli.py runs the commands themselves.)"""

import argparse
import dataclasses
import functools
import inspect
from dataclasses import dataclass

import pytest

from mmdialog import cli
from mmdialog.options import add_options, argparse_args, kwargs, kwargs_for, option, read

# command, its options, the arguments it requires, and what does its work (with the options a command passes on
# itself: its positionals, eval's --max-dialogues, which run_file_eval calls max_records, and the config options,
# which _config loads into the config the recipes take)
COMMANDS = {
    "demo": (cli.DemoOptions, {}),
    "train": (cli.TrainOptions, {}),
    "pretrain": (cli.PretrainOptions, {}),
    "world": (cli.WorldOptions, {"out": "x"}),
    "eval": (cli.EvalOptions, {"checkpoint": ["c"], "out": "o"}),
    "chat": (cli.ChatOptions, {"checkpoint": "c"}),
    "serve": (cli.ServeOptions, {"checkpoint": "c"}),
    "explain": (cli.ExplainOptions, {"checkpoint": "c", "dialogue": "test-00001", "out": "o"}),
    "report": (cli.ReportOptions, {"runs": ["r"], "out": "o"}),
    "experiment": (cli.ExperimentOptions, {"name": "fusion", "out": "o"}),
    "data check": (cli.DataCheckOptions, {"files": ["f"]}),
    "export": (cli.ExportOptions, {"checkpoint": "c", "out": "o"}),
}


# options whose default the command hands on in another form than the function's default
OWN_FORM = {
    ("world", "modalities"): "the comma-separated 'image' that generate_world also takes for ('image',)",
    ("chat", "policy"): "the name 'full', which cmd_chat parses into the policy object chat_loop takes",
    ("experiment", "seeds"): "None, for which cmd_experiment hands on [0] (fusion) or [0, 1] (multiturn)",
}


CONFIG = {"config", "overrides"}


def targets(command):
    if command in ("demo", "train", "pretrain"):
        import importlib

        return [importlib.import_module(f"mmdialog.recipes.{command}").main], CONFIG
    if command == "world":
        from mmdialog.config import WorldConfig
        from mmdialog.data.worlds.shapes import generate_world

        return [generate_world, WorldConfig], {"out"}
    if command == "eval":
        from mmdialog.eval.run import run_eval, run_file_eval

        return [run_eval, run_file_eval], {"checkpoint", "data"}
    if command == "chat":
        from mmdialog.chat.cli import chat_loop
        from mmdialog.chat.sampling import SamplingParams

        return [SamplingParams, chat_loop], {"checkpoint"}
    if command == "serve":
        from mmdialog.serve import serve

        return [serve], set()
    if command == "explain":
        from mmdialog.explain import explain_checkpoint

        return [explain_checkpoint], set()
    if command == "report":
        from mmdialog.eval.report import build_report

        return [build_report], set()
    if command == "experiment":
        from mmdialog.recipes import experiment, fusion_experiment

        return [experiment.main, fusion_experiment.main], {"name"} | CONFIG
    if command == "data check":
        from mmdialog.recipes.data_check import main

        return [main], set()
    from mmdialog.modelio import export

    return [export], set()


def subparser(command: str) -> argparse.ArgumentParser:
    p = cli.build_parser()
    for word in command.split():  # "data check": the check action of data
        p = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices[word]
    return p


def argv(command: str, required: dict) -> list[str]:
    cls, _ = COMMANDS[command]
    positional = {f.name for f in dataclasses.fields(cls) if f.metadata["positional"]}
    out = command.split()
    for name, value in required.items():
        out += ([] if name in positional else ["--" + name.replace("_", "-")])
        out += value if isinstance(value, list) else [value]
    return out


@pytest.mark.parametrize("command", COMMANDS)
def test_declared_options_are_the_parsers_flags(command):
    cls, _ = COMMANDS[command]
    flags = {a.dest: a for a in subparser(command)._actions if a.dest != "help"}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    assert set(flags) == set(fields), "a flag added by hand, or a field that is no flag"
    for names, kw in argparse_args(cls):
        action = flags[kw.get("dest", names[0])]
        assert action.option_strings == (list(names) if "dest" in kw else [])  # [] for a positional
        for key in ["type", "choices", "nargs", "metavar", "required", "help"]:
            if key in kw:
                assert getattr(action, key) == kw[key], (names, key)


@pytest.mark.parametrize("command", COMMANDS)
def test_parsing_gives_the_declared_defaults(command):
    cls, required = COMMANDS[command]
    args = cli.build_parser().parse_args(argv(command, required))
    assert read(cls, args) == cls(**required)
    assert args.func is getattr(cli, "cmd_" + command.replace(" ", "_"))


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_reaches_the_work_with_its_default(command):
    cls, required = COMMANDS[command]
    funcs, passed_by_the_command = targets(command)
    options = cls(**required)
    taken = set().union(*(kwargs_for(options, f) for f in funcs))
    values = kwargs(options)
    assert set(values) - taken <= passed_by_the_command, "an option that nothing takes"
    for f in funcs:
        if dataclasses.is_dataclass(f):
            defaults = {x.name: x.default for x in dataclasses.fields(f) if x.default is not dataclasses.MISSING}
            defaults |= {x.name: x.default_factory() for x in dataclasses.fields(f)
                         if x.default_factory is not dataclasses.MISSING}
        else:
            defaults = {p.name: p.default for p in inspect.signature(f).parameters.values()
                        if p.default is not inspect.Parameter.empty}
        for name, value in kwargs_for(options, f).items():
            if name not in defaults or name in required or (command, name) in OWN_FORM:
                continue
            want = defaults[name]
            norm = (lambda v: tuple(v) if isinstance(v, list) else v)
            assert norm(value) == norm(want), f"{command} --{name}: {value!r}, {f.__name__} has {want!r}"


def test_the_command_line_loads_without_torch():
    """cli.py takes chat's defaults from SamplingParams (config/sampling.py) and eval's from EvalConfig, neither of
    which imports torch: `mmdialog --help` stays quick."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", "import sys, mmdialog.cli; print(sorted({'torch', 'mmdialog.chat'} & "
                                              "set(sys.modules)))"], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"


def test_options_build_flags_and_hand_values_on():
    @dataclass(kw_only=True)
    class Opts:
        path: str = option(help="where", required=True)
        n: int | None = option(None, "how many")
        rate: float = option(1, "how fast")
        ids: list[int] | None = option(None, nargs="+")
        quiet: bool = option(False, "say less", flag="--no-noise", to="loud", convert=lambda v: not v)
        tags: list[str] = option(["a"], action="append")
        name: str = option("x", positional=True, nargs="?")

    p = argparse.ArgumentParser()
    add_options(p, Opts)
    by_dest = {a.dest: a for a in p._actions}
    assert by_dest["n"].type is int and by_dest["rate"].type is float and by_dest["ids"].type is int
    assert by_dest["path"].type is None and by_dest["quiet"].option_strings == ["--no-noise"]
    assert by_dest["name"].option_strings == []
    o = read(Opts, p.parse_args(["y", "--path", "p", "--n", "3", "--no-noise", "--ids", "1", "2"]))
    assert o == Opts(path="p", n=3, quiet=True, ids=[1, 2], name="y")
    assert Opts(path="p").tags == ["a"] and Opts(path="p").tags is not Opts(path="q").tags
    assert kwargs(o)["loud"] is False and "quiet" not in kwargs(o)

    def work(path, *, loud=True, rate=1.0):
        return path, loud, rate

    assert kwargs_for(o, work) == {"path": "p", "loud": False, "rate": 1}
    assert kwargs_for(o, work, skip={"path"}) == {"loud": False, "rate": 1}


@pytest.mark.parametrize("command", ["demo", "train", "pretrain"])
def test_config_commands_hand_their_config_and_flags_to_the_recipe(command, monkeypatch, tmp_path):
    import importlib

    from mmdialog.config import load_config

    recipe = importlib.import_module(f"mmdialog.recipes.{command}")
    got = {}

    @functools.wraps(recipe.main)  # with main's signature, which the command reads
    def main(cfg, *args, **kw):
        assert not args
        got.update(cfg=cfg, **kw)
        return 0

    monkeypatch.setattr(recipe, "main", main)
    resume = [] if command == "demo" else ["--resume"]
    assert cli.main([command, "--out", str(tmp_path), "train.max_steps=7"] + resume) == 0
    default = cli.PRETRAIN_CONFIG if command == "pretrain" else cli.DEMO_CONFIG
    assert got.pop("cfg") == load_config(default, ["train.max_steps=7"])
    assert got == {"out": str(tmp_path), **({} if command == "demo" else {"resume": True})}
    assert cli.main([command, "--config", str(default)]) == 0  # the defaults: --out runs/<command>, no resume
    assert got.pop("cfg") == load_config(default, []) and got == {"out": f"runs/{command}",
                                                                     **({} if command == "demo" else {"resume": False})}
