"""Run the CLI as a user would, on the tiny recipe: a few training steps, seconds in all."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny" / "smoke.yaml"


def cli(*args, stdin=None, check=True):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    r = subprocess.run([sys.executable, "-m", "mmdialog.cli", *map(str, args)], input=stdin, capture_output=True,
                       text=True, cwd=ROOT, env=env, timeout=300)
    if check and r.returncode != 0:
        raise AssertionError(f"mmdialog {' '.join(map(str, args))} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
    return r


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    r = cli("demo", "--config", TINY, "--out", out, "eval.demo_minutes=5")  # the budget path, as configs/demo.yaml runs it
    (out / "stdout.txt").write_text(r.stdout)
    return out


def test_demo_writes_everything(demo_run):
    m = json.loads((demo_run / "metrics.json").read_text())
    acc = m["accuracy"]
    assert set(acc["by_distance"]) == {"0", "1", "2", "3+"}
    for v in [acc["overall"], *[x for x in acc["by_distance"].values() if x is not None], *acc["by_round"].values(),
              *acc["by_family"].values()]:
        assert 0.0 <= v <= 1.0
    assert m["train"]["steps"] == 6 and m["train"]["wall_seconds"] > 0 and m["train"]["tokens_per_second"] > 0
    assert m["model"]["parameters"] > 1000
    assert m["counts"]["overall"] > 0
    for f in ["checkpoint/model.safetensors", "checkpoint/tokenizer.json", "world/world.json", "transcript.md",
              "plots.png", "train_log.jsonl", "predictions.jsonl"]:
        assert (demo_run / f).is_file(), f
    transcript = (demo_run / "transcript.md").read_text()
    assert ".png" in transcript and "| gold |" in transcript
    log = [json.loads(l) for l in (demo_run / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 6 and all(r["loss"] > 0 for r in log)
    stdout = (demo_run / "stdout.txt").read_text()
    assert "demo budget: 5 min in all" in stdout and "training gets" in stdout, stdout


def test_eval_loads_the_demo_checkpoint(demo_run, tmp_path):
    r = cli("eval", "--checkpoint", demo_run / "checkpoint", "--out", tmp_path, "--max-dialogues", "2")
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["counts"]["overall"] > 0 and "accuracy" in r.stdout


def test_chat_answers_and_handles_commands(demo_run):
    image = next((demo_run / "world" / "images" / "test").glob("*.png"))
    stdin = f"/image {image}\nDescribe the picture.\n/image /no/such.png\nHow many red things are there?\n/reset\n/quit\n"
    r = cli("chat", "--checkpoint", demo_run / "checkpoint", "--max-new-tokens", "4", stdin=stdin)
    assert r.stdout.count("bot> ") == 2
    assert "image file not found" in r.stdout and "conversation cleared" in r.stdout


def test_world_is_deterministic(tmp_path):
    cli("world", "--out", tmp_path / "a", "--dialogues", "20", "--seed", "4")
    cli("world", "--out", tmp_path / "b", "--dialogues", "20", "--seed", "4")
    a, b = tmp_path / "a", tmp_path / "b"
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files and all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


@pytest.mark.parametrize("args,needle", [
    (["train", "--config", str(TINY), "--out", "/tmp/x", "model.decoder.widht=3"], "unknown config key 'model.decoder.widht'"),
    (["eval", "--checkpoint", "/no/such/ckpt", "--out", "/tmp/x"], "checkpoint directory not found: /no/such/ckpt"),
    (["chat", "--checkpoint", "/no/such/ckpt"], "checkpoint directory not found"),
])
def test_bad_input_gives_one_clear_line(args, needle):
    r = cli(*args, check=False)
    assert r.returncode == 2
    assert needle in r.stderr and "Traceback" not in r.stderr


def test_malformed_world_file_is_named(tmp_path, demo_run):
    import shutil

    world = tmp_path / "world"
    shutil.copytree(demo_run / "world", world)
    lines = (world / "test.jsonl").read_text().splitlines()
    lines[1] = '{"id": "broken"'
    (world / "test.jsonl").write_text("\n".join(lines) + "\n")
    r = cli("eval", "--checkpoint", demo_run / "checkpoint", "--out", tmp_path / "e", "--world", world, check=False)
    assert r.returncode == 2 and "test.jsonl" in r.stderr and "line 2" in r.stderr and "Traceback" not in r.stderr


def test_help_explains_every_subcommand():
    top = cli("--help").stdout
    for sub in ["demo", "world", "train", "eval", "chat"]:
        assert sub in top
        assert "usage: mmdialog " + sub in cli(sub, "--help").stdout


def test_world_command_defaults_are_the_configs():
    from mmdialog.cli import build_parser
    from mmdialog.config import WorldConfig

    args = build_parser().parse_args(["world", "--out", "x"])
    w = WorldConfig()
    assert (args.dialogues, args.seed, args.image_size) == (w.dialogues, w.seed, w.image_size)
