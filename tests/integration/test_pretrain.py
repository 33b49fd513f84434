"""`mmdialog pretrain` as a user runs it: a few steps on the tiny recipe, then `mmdialog train` from its checkpoint."""

import json

import numpy as np
import pytest
from PIL import Image as PILImage
from safetensors.torch import load_file

from mmdialog.config import load_config, to_dict
from tests.integration.test_cli import ROOT, TINY, cli

PRETRAIN_TINY = ROOT / "configs" / "pretrain_tiny.yaml"


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain")
    r = cli("pretrain", "--config", PRETRAIN_TINY, "--out", out, "train.save_every=2")
    assert "held-out 6 pairs: retrieval media->text R@1/5/10" in r.stdout
    return out


def test_pretrain_writes_a_checkpoint_heads_metrics_and_a_log_per_objective(pretrained):
    m = json.loads((pretrained / "metrics.json").read_text())
    ev = m["eval"]
    for direction in ("media_to_text", "text_to_media"):
        assert set(ev["retrieval"][direction]) == {"r@1", "r@5", "r@10", "mean_rank"}
        assert 0 <= ev["retrieval"][direction]["r@1"] <= ev["retrieval"][direction]["r@5"] <= 1
    assert ev["captioning"]["captions"] == 6 and 0 <= ev["captioning"]["bleu4"] <= 1 and ev["captioning"]["cider"] >= 0
    assert ev["qa"]["questions"] > 0 and 0 <= ev["qa"]["accuracy"] <= 1 and "head_accuracy" in ev["qa"]
    assert m["train"]["steps"] == 4 and m["data"]["pairs"] == 48 and m["data"]["skipped"] == 0
    log = [json.loads(line) for line in (pretrained / "train_log.jsonl").read_text().splitlines()]
    for name in ("contrastive", "matching", "masked", "captioning", "qa", "temperature"):
        assert all(name in rec for rec in log), name
    assert (pretrained / "plots.png").stat().st_size > 1000
    heads = load_file(pretrained / "pretrain_heads.safetensors")
    assert any(k.startswith("contrastive.") for k in heads) and any(k.startswith("answers.") for k in heads)
    weights = load_file(pretrained / "checkpoint" / "model.safetensors")
    assert not any(k.startswith("pretrain_heads") for k in weights)  # the checkpoint is the plain model
    assert json.loads((pretrained / "pretrain_heads.json").read_text())["answers"]


def test_train_fine_tunes_the_pretrained_checkpoint(pretrained, tmp_path):
    r = cli("train", "--config", TINY, "--out", tmp_path, f"train.init_from={pretrained / 'checkpoint'}",
            "train.max_steps=2")
    assert "trained 2 steps" in r.stdout
    assert (tmp_path / "checkpoint" / "tokenizer.json").read_text() == \
        (pretrained / "checkpoint" / "tokenizer.json").read_text()


def test_an_interrupted_pretraining_resumes_to_the_same_weights(pretrained, tmp_path):
    """Resume from step 2 (heads, optimizer, RNG, data position): step 4 is bitwise the uninterrupted one."""
    import shutil

    shutil.copytree(pretrained / "checkpoints" / "step-00000002", tmp_path / "checkpoints" / "step-00000002")
    shutil.copytree(pretrained / "world", tmp_path / "world")
    cli("pretrain", "--config", PRETRAIN_TINY, "--out", tmp_path, "train.save_every=2", "pretrain.eval_pairs=0",
        "--resume")
    a = load_file(pretrained / "checkpoints" / "step-00000004" / "model.safetensors")
    b = load_file(tmp_path / "checkpoints" / "step-00000004" / "model.safetensors")
    assert a.keys() == b.keys() and any(k.startswith("pretrain_heads.") for k in a)
    assert all(a[k].equal(b[k]) for k in a)


def test_user_pairs_with_a_bad_record_are_reported_not_fatal(tmp_path):
    rng = np.random.default_rng(0)
    lines = []
    for i in range(8):
        PILImage.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        lines.append(json.dumps({"image": f"{i}.png", "text": f"picture number {i}", "question": "Which one?",
                                 "answer": str(i)}))
    lines.append(json.dumps({"image": "gone.png", "text": "a missing picture"}))
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    r = cli("pretrain", "--config", PRETRAIN_TINY, "--out", tmp_path / "run", f"pretrain.pairs_file={tmp_path / 'pairs.jsonl'}",
            "train.max_steps=2", "train.batch_size=4", "pretrain.eval_pairs=0")
    assert "skipped 1 record(s)" in r.stdout and "pairs.jsonl line 9" in r.stdout
    skipped = [json.loads(line) for line in (tmp_path / "run" / "skipped.jsonl").read_text().splitlines()]
    assert skipped[0]["record"] == "pairs.jsonl line 9" and "file not found" in skipped[0]["reason"]


def test_bad_settings_give_one_clear_line(tmp_path):
    r = cli("pretrain", "--config", PRETRAIN_TINY, "--out", tmp_path, "pretrain.objectives.itm=1", check=False)
    assert r.returncode == 2 and "unknown objective pretrain.objectives.itm" in r.stderr and "Traceback" not in r.stderr


def test_the_pretraining_recipe_builds_the_demo_model():
    """configs/pretrain.yaml must keep configs/demo.yaml's model section, or train.init_from refuses it."""
    assert to_dict(load_config(ROOT / "configs" / "pretrain.yaml").model) == \
        to_dict(load_config(ROOT / "configs" / "demo.yaml").model)
    assert to_dict(load_config(PRETRAIN_TINY).model) == to_dict(load_config(TINY).model)


def test_two_processes_pretrain_in_step(tmp_path):
    """torchrun, gloo: the contrastive loss gathers both processes' pairs; the parameters (heads included) must
    end identical on both (the trainer compares their digests)."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "mmdialog",
                        "pretrain", "--config", str(PRETRAIN_TINY), "--out", str(tmp_path), "train.max_steps=2",
                        "pretrain.eval_pairs=0"], capture_output=True, text=True, cwd=ROOT, timeout=300,
                       env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    meta = json.loads((tmp_path / "checkpoint" / "meta.json").read_text())
    assert meta["processes"] == 2 and len(set(meta["param_sha1_by_rank"])) == 1
