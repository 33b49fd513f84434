"""Training over JSONL shards read lazily: resumes mid-epoch bitwise, and trains exactly as the eager dataset."""

import json
import shutil

import torch

from mmdialog.data.formats.lazy import LazyDataset
from tests.train.conftest import run, smoke_config


def write_shards(d):
    d.mkdir()
    n = 0
    for s in range(3):
        lines = []
        for j in range(6):
            if (s, j) in ((0, 2), (2, 4)):
                bad = {"messages": [{"role": "assistant", "content": "x"}]}
                lines.append('{"messages": [' if s == 0 else json.dumps(bad))
                continue
            q = f"How many apples are {n} plus {n % 4} apples?"
            lines.append(json.dumps({"messages": [{"role": "user", "content": q},
                                                  {"role": "assistant", "content": str(n + n % 4)}]}))
            n += 1
        (d / f"shard-{s}.jsonl").write_text("\n".join(lines) + "\n")
    return n


def params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_lazy_shards_resume_mid_epoch_bitwise_and_match_eager(tmp_path):
    valid = write_shards(tmp_path / "data")  # 16 valid records: 4 steps an epoch of batch 4
    glob = str(tmp_path / "data" / "shard-*.jsonl")
    cfg = smoke_config(f"data.train_file={glob}", "data.format=openai", "data.lazy=true", "train.max_steps=7",
                       "train.save_every=5", "train.keep_last=3")
    model, _, dataset, res = run(cfg, None, tmp_path / "a")
    assert isinstance(dataset, LazyDataset) and len(dataset) == valid == 16 and len(dataset.skipped) == 2
    assert [s.id for s in dataset.skipped] == ["shard-0.jsonl line 3", "shard-2.jsonl line 5"]
    # step 5 is step 1 of epoch 1: the resumed run picks up mid-epoch
    (tmp_path / "b" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "a" / "checkpoints" / "step-00000005", tmp_path / "b" / "checkpoints" / "step-00000005")
    resumed, _, _, res_b = run(cfg, None, tmp_path / "b", resume=True)
    assert res_b.resumed_from == 5 and res_b.steps == 7 and res_b.losses == res.losses
    a, b = params(model), params(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    eager_cfg = smoke_config(f"data.train_file=[{glob}]", "data.format=openai", "train.max_steps=7")
    eager, _, eager_ds, _ = run(eager_cfg, None, tmp_path / "c")
    assert not isinstance(eager_ds, LazyDataset)
    e = params(eager)
    assert all(torch.equal(a[k], e[k]) for k in a)
