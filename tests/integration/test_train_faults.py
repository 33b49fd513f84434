"""Training survives faults: a `mmdialog train` process killed with SIGKILL mid-run, or stopped with SIGTERM,
continues with --resume to the very same parameters (bitwise, on CPU) as a run never interrupted."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmdialog.train.checkpoint import latest_training_checkpoint, step_dirs

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "tiny" / "smoke.yaml"
STEPS = 40


def command(out: Path, world: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mmdialog", "train", "--config", str(SMOKE), "--out", str(out), f"world.dir={world}",
            "train.num_threads=1", "train.precision=fp32", f"train.max_steps={STEPS}", "train.save_every=2",
            "train.keep_last=2", "train.log_every=1", *extra]


def run(*args) -> subprocess.CompletedProcess:
    r = subprocess.run(list(args), capture_output=True, text=True, cwd=ROOT, timeout=300,
                       env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert r.returncode == 0, f"{' '.join(args)} exited {r.returncode}:\n{r.stdout}\n{r.stderr[-3000:]}"
    return r


def start_and_signal(cmd: list[str], out: Path, sig: int) -> subprocess.Popen:
    """Start training; send `sig` as soon as its first resumable checkpoint exists (many steps before the end)."""
    err = open(out.parent / f"{out.name}.stderr", "w+")
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, text=True)
    p.errors = lambda: (err.seek(0), err.read()[-3000:])[1]
    try:
        deadline = time.monotonic() + 240
        while latest_training_checkpoint(out / "checkpoints") is None:
            assert p.poll() is None, f"training ended before its first checkpoint:\n{p.errors()}"
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.005)
        p.send_signal(sig)
        p.wait(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return p


def weights(run_dir: Path) -> dict:
    return load_file(str(run_dir / "checkpoint" / "model.safetensors"))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    w = tmp_path_factory.mktemp("world")
    run(sys.executable, "-m", "mmdialog", "world", "--out", str(w), "--dialogues", "60", "--seed", "1",
        "--image-size", "32")
    return w


@pytest.fixture(scope="module")
def uninterrupted(world, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted")
    run(*command(out, world))
    return out


def assert_same_run(resumed: Path, reference: Path) -> None:
    a, b = weights(reference), weights(resumed)
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"parameters differ after resuming: {different[:5]}"
    log = [json.loads(line) for line in (resumed / "train_log.jsonl").read_text().splitlines()]
    ref = [json.loads(line) for line in (reference / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in log] == [r["loss"] for r in ref]
    assert json.loads((resumed / "checkpoint" / "meta.json").read_text())["step"] == STEPS


def test_sigkill_mid_run_then_resume_gives_bitwise_the_same_parameters(world, uninterrupted, tmp_path):
    out = tmp_path / "run"
    p = start_and_signal(command(out, world), out, signal.SIGKILL)
    assert p.returncode == -signal.SIGKILL
    killed_at = step_dirs(out / "checkpoints")[-1][0]
    assert killed_at < STEPS and not (out / "checkpoint").exists()  # killed mid-run: no final model yet
    r = run(*command(out, world), "--resume")
    assert f"(step {killed_at})" in r.stdout
    assert_same_run(out, uninterrupted)


def test_sigterm_saves_a_checkpoint_and_exits_143_then_resumes(world, uninterrupted, tmp_path):
    out = tmp_path / "run"
    p = start_and_signal(command(out, world), out, signal.SIGTERM)
    assert p.returncode == 143, p.errors()
    stopped_at = step_dirs(out / "checkpoints")[-1][0]
    assert 0 < stopped_at < STEPS
    assert json.loads((out / "checkpoint" / "meta.json").read_text())["step"] == stopped_at
    run(*command(out, world), "--resume")
    assert_same_run(out, uninterrupted)
