"""`mmdialog data check`, training on a dataset file, and `mmdialog export`, as a user runs them.

Most commands run in-process through `mmdialog.cli.main` (a subprocess costs seconds of imports);
chat runs as a process because it reads the terminal.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from mmdialog.cli import main
from mmdialog.data.collate import Collator
from mmdialog.data.formats import DataFile
from mmdialog.errors import MMDialogError
from mmdialog.modelio import load_any
from mmdialog.modelio.hf_export import INDEX

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny" / "smoke.yaml"
FIXTURES = ROOT / "tests" / "fixtures" / "formats"
MEDIA = FIXTURES / "media"


def run(capsys, *args):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_data_check_reports_each_file(capsys):
    rc, out, _ = run(capsys, "data", "check", FIXTURES / "llava.json", FIXTURES / "openai.jsonl", "--media-root", MEDIA)
    assert rc == 1  # some records are invalid
    assert f"{FIXTURES / 'llava.json'} (llava): 12 records read, 5 valid, 7 invalid" in out
    assert f"{FIXTURES / 'openai.jsonl'} (openai): 9 records read, 3 valid, 6 invalid" in out
    assert "  line 39 (record 5): tag count differs from media count: 2 <image> tag(s)" in out


def test_data_check_json(capsys):
    rc, out, _ = run(capsys, "data", "check", FIXTURES / "sharegpt.jsonl", "--format", "sharegpt", "--media-root", MEDIA,
                     "--json")
    report = json.loads(out)
    assert rc == 1 and (report["records"], report["valid"]) == (10, 3)
    assert [i["line"] for i in report["invalid"]] == [4, 5, 6, 7, 8, 9, 10]
    assert set(report["invalid"][0]) == {"file", "line", "record", "reason"}
    assert report["files"][0]["format"] == "sharegpt" and len(report["files"][0]["invalid"]) == 7


def test_data_check_passes_a_clean_file_and_names_a_missing_one(capsys, tmp_path):
    clean = tmp_path / "clean.jsonl"
    rec = {"image": "images/red.png", "conversations": [{"from": "human", "value": "<image>?"}, {"from": "gpt", "value": "red"}]}
    clean.write_text(json.dumps(rec) + "\n")
    rc, out, _ = run(capsys, "data", "check", clean, "--media-root", MEDIA)
    assert rc == 0 and "1 records read, 1 valid, 0 invalid" in out
    rc, _, err = run(capsys, "data", "check", tmp_path / "nope.json")
    assert rc == 2 and err.strip() == f"mmdialog data: error: data file not found: {tmp_path / 'nope.json'}"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A few steps on the LLaVA fixture file with the tiny recipe."""
    out = tmp_path_factory.mktemp("llava-run")
    rc = main(["train", "--config", str(TINY), "--out", str(out), f"data.train_file={FIXTURES / 'llava.json'}",
               "data.format=llava", f"data.media_root={MEDIA}", "train.batch_size=2", "train.max_steps=3", "train.log_every=1"])
    assert rc == 0
    return out


def test_training_on_a_llava_file_reports_what_it_skipped(trained):
    skipped = [json.loads(l) for l in (trained / "skipped.jsonl").read_text().splitlines()]
    assert [s["record"] for s in skipped] == [f"line {n} (record {i})" for i, n in enumerate((30, 39, 47, 55, 63, 71, 79), 4)]
    assert skipped[0]["reason"].startswith("role order broken")
    log = [json.loads(l) for l in (trained / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 3 and all(r["loss"] > 0 for r in log)
    ck = load_any(trained / "checkpoint")
    assert ck.meta["data"] == str(FIXTURES / "llava.json") and ck.meta["step"] == 3
    vocab = ck.tokenizer.tok.get_vocab()  # the tokenizer was trained on the file's text
    assert any("colour" in tok for tok in vocab)


def test_training_says_so_when_too_few_records_are_valid(capsys, tmp_path):
    rc, out, err = run(capsys, "train", "--config", TINY, "--out", tmp_path, f"data.train_file={FIXTURES / 'llava.jsonl'}",
                       f"data.media_root={MEDIA}")
    assert rc == 2 and "2 usable conversations, fewer than train.batch_size=4" in err and "line 3: not valid JSON" in err


def test_data_check_counts_tokens_with_a_checkpoint(capsys, trained):
    rc, out, _ = run(capsys, "data", "check", FIXTURES / "sharegpt.jsonl", "--media-root", MEDIA, "--checkpoint",
                     trained / "checkpoint", "--max-length", "20", "--json")
    reasons = {i["line"]: i["reason"] for i in json.loads(out)["invalid"]}
    assert reasons[1].startswith("over the maximum length: ") and "tokens (media expanded) > 20" in reasons[1]
    assert reasons[2].startswith("media the model cannot encode: turn 1 holds audio")


def logits(model, processor, convs):
    batch = Collator(processor.tokenizer.pad_id)([processor(c) for c in convs])
    batch.pop("labels")
    with torch.no_grad():
        return model(**batch).logits  # (B, T, V)


def test_export_is_sharded_and_loads_back_bit_for_bit(capsys, trained, tmp_path):
    out = tmp_path / "export"
    rc, stdout, _ = run(capsys, "export", trained / "checkpoint", "--out", out, "--max-shard-size", "60KB")
    assert rc == 0 and "shard(s)" in stdout
    index = json.loads((out / INDEX).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    for s in shards:  # within the limit, or one tensor bigger than it alone (the ViT's patch embedding here)
        names = [k for k, f in index["weight_map"].items() if f == s]
        with safe_open(str(out / s), "pt") as f:
            size = sum(f.get_tensor(k).numel() * 4 for k in f.keys())
        assert sorted(names) == sorted(safe_open(str(out / s), "pt").keys()) and (size <= 60_000 or len(names) == 1)
    assert not (out / "model.safetensors").exists()
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]:
        assert (out / f).is_file(), f
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "mmdialog" and config["format"] == "mmdialog-export/1"
    assert len(config["tied_weights"]) == 1  # the tiny decoder ties its embedding and LM head

    a, b = load_any(trained / "checkpoint"), load_any(out)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    assert all(sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for k, t in sa.items()
                                                   if k not in config["tied_weights"])
    convs = [r.conversation for r in DataFile(FIXTURES / "llava.json", media_root=MEDIA).records() if r.conversation][:3]
    assert torch.equal(logits(a.model, a.processor, convs), logits(b.model, b.processor, convs))
    assert b.tokenizer.chat_template == a.tokenizer.chat_template and b.config == a.config

    # one file below the limit; exporting again over an export replaces it
    rc, _, _ = run(capsys, "export", out, "--out", out)
    assert rc == 0 and (out / "model.safetensors").is_file() and not (out / INDEX).exists()
    assert torch.equal(logits(load_any(out).model, b.processor, convs), logits(a.model, a.processor, convs))


def test_export_refuses_to_overwrite_other_directories_and_bad_sizes(capsys, trained, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    rc, _, err = run(capsys, "export", trained / "checkpoint", "--out", tmp_path)
    assert rc == 2 and "exists and is not an mmdialog export" in err and (tmp_path / "notes.txt").is_file()
    rc, _, err = run(capsys, "export", trained / "checkpoint", "--out", tmp_path / "x", "--max-shard-size", "lots")
    assert rc == 2 and "--max-shard-size must look like 5GB" in err


def test_eval_and_chat_take_an_export(capsys, trained, tmp_path):
    out = tmp_path / "export"
    assert main(["export", str(trained / "checkpoint"), "--out", str(out)]) == 0
    assert main(["world", "--out", str(tmp_path / "world"), "--dialogues", "10", "--image-size", "32"]) == 0
    rc, stdout, _ = run(capsys, "eval", "--checkpoint", out, "--world", tmp_path / "world", "--out", tmp_path / "eval",
                        "--max-dialogues", "1")
    assert rc == 0 and json.loads((tmp_path / "eval" / "metrics.json").read_text())["counts"]["overall"] > 0
    r = subprocess.run([sys.executable, "-m", "mmdialog.cli", "chat", "--checkpoint", str(out), "--max-new-tokens", "2"],
                       input="What colour?\n/quit\n", capture_output=True, text=True, cwd=ROOT, timeout=120,
                       env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert r.returncode == 0 and r.stdout.count("bot> ") == 1, r.stderr


def test_shard_sizes_parse_as_hugging_face_counts_them():
    from mmdialog.modelio.hf_export import parse_size

    assert parse_size("5GB") == 5 * 10**9 and parse_size("200MiB") == 200 * 2**20 and parse_size("2048") == 2048
    assert parse_size(" 1.5 kb ") == 1500
    for bad in ["", "5 parsecs", "0", "-1MB"]:
        with pytest.raises(MMDialogError, match="--max-shard-size"):
            parse_size(bad)


def test_a_damaged_export_is_named(trained, tmp_path):
    from mmdialog.modelio import export, load_export

    out = tmp_path / "e"
    export(trained / "checkpoint", out, max_shard_size="60KB")
    index = json.loads((out / INDEX).read_text())
    first = sorted(set(index["weight_map"].values()))[0]
    index["weight_map"] = {k: ("../" + v if v == first else v) for k, v in index["weight_map"].items()}
    (out / INDEX).write_text(json.dumps(index))
    with pytest.raises(MMDialogError, match=r"names the weight file '\.\./model-00001"):
        load_export(out)
    (out / first).unlink()
    index["weight_map"] = {k: v.removeprefix("../") for k, v in index["weight_map"].items()}
    (out / INDEX).write_text(json.dumps(index))
    with pytest.raises(MMDialogError, match="model-00001-of-.*which is not in"):
        load_export(out)
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "format": "something-else"}))
    with pytest.raises(MMDialogError, match="has format 'something-else'"):
        load_export(out)
