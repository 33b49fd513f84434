"""Resumable training in one process: the sampler's position, checkpoint rotation, resume == uninterrupted,
non-finite losses. The kill -9 test of a real process is tests/integration/test_train_faults.py."""

import shutil

import numpy as np
import pytest
import torch

from mmdialog.errors import MMDialogError
from mmdialog.modelio import load_checkpoint
from mmdialog.train.checkpoint import latest_training_checkpoint, step_dirs
from mmdialog.train.sampler import StepSampler
from tests.train.conftest import run, smoke_config


def drain(sampler, steps):
    return [sampler.next() for _ in range(steps)]


def test_sampler_resumes_mid_epoch_and_crosses_epochs():
    a = StepSampler(10, 4, seed=3)  # 2 steps per epoch, 2 conversations dropped each epoch
    full = drain(a, 7)
    b = StepSampler(10, 4, seed=3)
    drain(b, 3)
    state = b.state_dict()
    c = StepSampler(10, 4, seed=3)
    c.load_state_dict(state)
    assert drain(c, 4) == full[3:]
    epochs = [sorted(i for s in full[e * 2:e * 2 + 2] for mb in s for i in mb) for e in range(3)]
    assert all(len(set(e)) == 8 for e in epochs) and epochs[0] != epochs[1]  # a new order each epoch


def test_sampler_shards_are_the_single_process_batch():
    single = drain(StepSampler(40, 8, seed=0), 5)
    ranks = [drain(StepSampler(40, 8, seed=0, rank=r, world_size=2, micro=2), 5) for r in range(2)]
    for step in range(5):
        together = [i for m in range(2) for r in range(2) for i in ranks[r][step][m]]
        assert together == single[step][0]


def test_sampler_refuses_uneven_split_and_other_order():
    with pytest.raises(MMDialogError, match="batch_size=6 must split evenly"):
        StepSampler(40, 6, seed=0, world_size=2, micro=2)
    s = StepSampler(40, 8, seed=0)
    with pytest.raises(MMDialogError, match="train.seed = 0, this run has 1"):
        StepSampler(40, 8, seed=1).load_state_dict(s.state_dict())


def test_grouped_sampler_batches_similar_lengths_and_visits_each_conversation_once():
    lengths = np.random.default_rng(0).integers(100, 250, 400)
    pad = lambda steps: sum(len(b) * lengths[b].max() for s in steps for b in s) / sum(lengths[b].sum() for s in steps for b in s)  # noqa: E731
    grouped = drain(StepSampler(400, 16, seed=2, lengths=lengths, group=8), 50)  # 25 steps per epoch
    plain = drain(StepSampler(400, 16, seed=2), 50)
    for e in range(2):
        seen = [i for s in grouped[e * 25:(e + 1) * 25] for mb in s for i in mb]
        assert len(seen) == len(set(seen)) == 400
    assert pad(grouped) < 1.08 < 1.3 < pad(plain)  # padded tokens per real token
    assert grouped[:25] != grouped[25:]  # a new grouping each epoch
    c = StepSampler(400, 16, seed=2, lengths=lengths, group=8)
    drain(c, 30)
    d = StepSampler(400, 16, seed=2, lengths=lengths, group=8)
    d.load_state_dict(c.state_dict())
    assert drain(d, 20) == grouped[30:]
    with pytest.raises(MMDialogError, match="train.group_by_length = 0, this run has 8"):
        StepSampler(400, 16, seed=2, lengths=lengths, group=8).load_state_dict(StepSampler(400, 16, seed=2).state_dict())
    with pytest.raises(MMDialogError, match="group_by_length=8 needs each training conversation's token count; got 399"):
        StepSampler(400, 16, seed=2, lengths=lengths[:399], group=8)


def params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_resume_matches_uninterrupted_run_bitwise(tiny_world, tmp_path):
    cfg = smoke_config("train.max_steps=8", "train.save_every=3", "train.keep_last=2")
    model, _, _, res = run(cfg, tiny_world, tmp_path / "a")
    assert [s for s, _ in step_dirs(tmp_path / "a" / "checkpoints")] == [6, 8]  # 3 rotated out; 8: the final state
    ck = load_checkpoint(tmp_path / "a" / "checkpoints" / "step-00000006")  # a training checkpoint loads for chat too
    assert ck.meta["step"] == 6
    (tmp_path / "b" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "a" / "checkpoints" / "step-00000006", tmp_path / "b" / "checkpoints" / "step-00000006")
    (tmp_path / "b" / "checkpoints" / ".step-00000007.tmp-999").mkdir()  # a save killed half way is ignored
    resumed, _, _, res_b = run(cfg, tiny_world, tmp_path / "b", resume=True)
    assert res_b.resumed_from == 6 and res_b.steps == 8
    a, b = params(model), params(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert res_b.losses == res.losses  # the restored log and the redone steps


def test_resume_without_checkpoint_starts_fresh(tiny_world, tmp_path):
    cfg = smoke_config("train.max_steps=2")
    _, _, _, res = run(cfg, tiny_world, tmp_path, resume=True)
    assert res.resumed_from == 0 and res.steps == 2 and latest_training_checkpoint(tmp_path / "checkpoints") is None


@pytest.fixture
def nan_on_call(monkeypatch):
    """Make the objective's 3rd forward return a NaN loss."""
    from mmdialog.train import trainer

    calls = []

    class Poisoned(trainer.NextTokenObjective):
        def forward(self, batch):
            loss, weight = super().forward(batch)
            calls.append(1)
            return (loss * float("nan"), weight) if len(calls) == 3 else (loss, weight)

    monkeypatch.setattr(trainer, "NextTokenObjective", Poisoned)


def test_nan_loss_stops_before_the_weights_change(tiny_world, tmp_path, nan_on_call):
    from mmdialog.train.trainer import prepare, train

    cfg = smoke_config("train.max_steps=6", "train.save_every=2")
    tokenizer, model, _, dataset = prepare(cfg, tiny_world, progress=False)
    with pytest.raises(MMDialogError, match=r"non-finite loss or gradient at step 3: loss nan.* on batch \[train-"):
        train(cfg, model, tokenizer, dataset, tmp_path, progress=False, log=lambda *a: None)
    saved = load_checkpoint(tmp_path / "checkpoints" / "step-00000002").model.state_dict()
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())


def test_nan_loss_skips_the_batch_when_asked(tiny_world, tmp_path, nan_on_call):
    model, _, _, res = run(smoke_config("train.max_steps=5", "train.on_nan=skip"), tiny_world, tmp_path)
    assert res.steps == 5 and res.skipped_batches == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("kinds,reported", [
    (("train.augment.cut_history=0.5", "train.augment.distractors=0.5"), "augmented on every draw"),
    (("train.augment.colour=0.5", "train.augment.paraphrase=0.5"), "colour 0.5, paraphrase 0.5"),
])
def test_resume_with_augmentation_is_bitwise(tiny_world, tmp_path, kinds, reported):
    """Augmented draws depend on (seed, epoch, index) only: a resumed run (here in its second epoch) draws the same."""
    cfg = smoke_config("train.max_steps=5", "train.batch_size=16", "train.save_every=4", "train.augment.flip=0.5",
                       *kinds)
    model, _, dataset, _ = run(cfg, tiny_world, tmp_path / "a")
    assert reported in dataset.report()
    shutil.copytree(tmp_path / "a" / "checkpoints" / "step-00000004", tmp_path / "b" / "checkpoints" / "step-00000004")
    resumed, _, _, res = run(cfg, tiny_world, tmp_path / "b", resume=True)
    assert res.resumed_from == 4
    a, b = params(model), params(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_group_by_length_trains_on_less_padding_and_resumes(tiny_world, tmp_path):
    cfg = smoke_config("train.max_steps=6", "train.save_every=3", "train.group_by_length=4")
    model, _, dataset, res = run(cfg, tiny_world, tmp_path / "a")
    assert res.steps == 6 and torch.isfinite(torch.tensor(res.final_loss))
    (tmp_path / "b" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "a" / "checkpoints" / "step-00000003", tmp_path / "b" / "checkpoints" / "step-00000003")
    resumed, *_ = run(cfg, tiny_world, tmp_path / "b", resume=True)
    assert all(torch.equal(v, params(resumed)[k]) for k, v in params(model).items())
    with pytest.raises(MMDialogError, match="train.group_by_length"):  # the data order differs: no resume
        run(smoke_config("train.max_steps=8", "train.save_every=3"), tiny_world, tmp_path / "b", resume=True)
