"""Media dialogues as a user meets them: `mmdialog world --modalities`, `data check` on the media split, and
training the tiny image + audio + video recipe on it (a few steps)."""

import json

from tests.integration.test_cli import ROOT
from tests.integration.test_eval_lab import cli

MULTIMODAL = ROOT / "configs" / "tiny" / "multimodal.yaml"


def test_world_data_check_and_training_on_media_dialogues(tmp_path):
    world = tmp_path / "world"
    r = cli("world", "--out", world, "--dialogues", "10", "--seed", "2", "--image-size", "32",
            "--modalities", "image,audio,video", "--media-dialogues", "30")
    media = json.loads(r.stdout)["media"]
    assert media["counts"] == {"train": 24, "val": 3, "test": 3} and set(media["kinds"]) == {"mixed", "motion"}
    assert json.loads((world / "world.json").read_text())["media"]["settings"]["sample_rate"] == 16000
    r = cli("data", "check", world / "media" / "train.jsonl", "--json")
    report = json.loads(r.stdout)
    assert (report["records"], report["valid"]) == (24, 24) and report["files"][0]["format"] == "sharegpt"
    run = tmp_path / "run"
    r = cli("train", "--config", MULTIMODAL, "--out", run, f"data.train_file={world / 'media' / 'train.jsonl'}",
            "train.max_steps=2", "train.log_every=1")
    assert "trained 2 steps" in r.stdout and not (run / "skipped.jsonl").exists()
    r = cli("data", "check", world / "media" / "val.jsonl", "--checkpoint", run / "checkpoint")
    assert "3 records read, 3 valid, 0 invalid" in r.stdout


def test_world_names_an_unknown_modality(tmp_path):
    r = cli("world", "--out", tmp_path, "--dialogues", "10", "--modalities", "image,smell", check=False)
    assert r.returncode == 2 and "unknown modality ['smell']" in r.stderr and "Traceback" not in r.stderr
