"""Data-parallel training: `torchrun --nproc_per_node=2 -m mmdialog train` on CPU (gloo) keeps the parameters
identical on both processes, follows a single-process run with the same global batch, and resumes."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "tiny" / "smoke.yaml"
ARGS = ["train.num_threads=1", "train.precision=fp32", "train.max_steps=6", "train.batch_size=4",
        "train.log_every=1", "train.save_every=3"]


def run(*args) -> subprocess.CompletedProcess:
    r = subprocess.run(list(map(str, args)), capture_output=True, text=True, cwd=ROOT, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    assert r.returncode == 0, f"{' '.join(map(str, args))} exited {r.returncode}:\n{r.stdout}\n{r.stderr[-4000:]}"
    return r


def train(out: Path, world: Path, processes: int, *extra):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] \
        if processes > 1 else [sys.executable]
    return run(*launcher, "-m", "mmdialog", "train", "--config", SMOKE, "--out", out, f"world.dir={world}", *ARGS, *extra)


def log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    w = tmp_path_factory.mktemp("world")
    run(sys.executable, "-m", "mmdialog", "world", "--out", w, "--dialogues", "60", "--seed", "1", "--image-size", "32")
    return w


def test_two_processes_stay_identical_and_match_one(world, tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    # AdamW: Muon orthogonalises in bf16, so the fp32-rounding differences of the two reductions grow past 1e-5
    r = train(two, world, 2, "train.optimizer=adamw")
    assert "2 processes" in r.stdout
    meta = json.loads((two / "checkpoint" / "meta.json").read_text())
    assert meta["processes"] == 2
    digests = meta["param_sha1_by_rank"]
    assert len(digests) == 2 and digests[0] == digests[1]  # bit for bit the same parameters on both ranks

    train(one, world, 1, "train.optimizer=adamw")
    assert [r["step"] for r in log(two)] == list(range(1, 7))
    assert [r["loss"] for r in log(two)] == pytest.approx([r["loss"] for r in log(one)], rel=1e-5)
    assert [r["tokens"] for r in log(two)] == [r["tokens"] for r in log(one)]  # the same conversations per step
    a, b = load_file(str(one / "checkpoint" / "model.safetensors")), load_file(str(two / "checkpoint" / "model.safetensors"))
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k

    # resume both processes from step 3: bitwise the same end
    resumed = tmp_path / "resumed"
    shutil.copytree(two / "checkpoints" / "step-00000003", resumed / "checkpoints" / "step-00000003")
    train(resumed, world, 2, "train.optimizer=adamw", "--resume")
    assert json.loads((resumed / "checkpoint" / "meta.json").read_text())["param_sha1_by_rank"] == digests


def test_fsdp_two_processes_match_one_save_full_weights_and_resume(world, tmp_path):
    """train.distributed=fsdp (FSDP2, parameters sharded across the 2 processes, gloo): the same losses and
    parameters as one process with the same global batch, a final checkpoint of full weights that loads like
    any other, and a bitwise resume from a resumable checkpoint (full weights + gathered optimizer state)."""
    from mmdialog.modelio import load_checkpoint

    fsdp, one = tmp_path / "fsdp", tmp_path / "one"
    r = train(fsdp, world, 2, "train.distributed=fsdp", "train.optimizer=adamw", "train.grad_accum=2")
    assert "2 processes (fsdp)" in r.stdout
    meta = json.loads((fsdp / "checkpoint" / "meta.json").read_text())
    assert meta["processes"] == 2 and meta["distributed"] == "fsdp"
    train(one, world, 1, "train.optimizer=adamw", "train.grad_accum=2")
    assert [r["loss"] for r in log(fsdp)] == pytest.approx([r["loss"] for r in log(one)], rel=1e-5)
    a, b = load_file(str(one / "checkpoint" / "model.safetensors")), load_file(str(fsdp / "checkpoint" / "model.safetensors"))
    assert sorted(a) == sorted(b)  # full, unsharded tensors under the same names (tied weights saved once)
    for k in a:
        assert a[k].shape == b[k].shape and torch.allclose(a[k], b[k], atol=1e-5), k
    loaded = load_checkpoint(fsdp / "checkpoint")  # what chat / eval / export do
    assert sum(p.numel() for p in loaded.model.parameters()) > 0

    resumed = tmp_path / "resumed"
    shutil.copytree(fsdp / "checkpoints" / "step-00000003", resumed / "checkpoints" / "step-00000003")
    train(resumed, world, 2, "train.distributed=fsdp", "train.optimizer=adamw", "train.grad_accum=2", "--resume")
    c = load_file(str(resumed / "checkpoint" / "model.safetensors"))
    assert all(torch.equal(b[k], c[k]) for k in b)
