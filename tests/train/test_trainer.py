import json

import pytest
import torch

from mmdialog.config import TrainConfig
from mmdialog.errors import MMDialogError
from mmdialog.train.trainer import lr_factor


def test_warmup_then_cosine_to_floor():
    cfg = TrainConfig(warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, 0.0, cfg) == pytest.approx(0.1)
    assert lr_factor(9, 0.05, cfg) == pytest.approx(1.0)
    assert lr_factor(10, 0.0, cfg) == pytest.approx(1.0)
    assert lr_factor(500, 0.5, cfg) == pytest.approx(0.55)
    assert lr_factor(999, 1.0, cfg) == pytest.approx(0.1)
    assert lr_factor(999, 3.0, cfg) == pytest.approx(0.1)  # past the budget it stays at the floor


def test_optimizer_groups_scale_encoder_lr_and_skip_decay_on_vectors(tiny):
    from mmdialog.train.trainer import make_optimizer

    model, _ = tiny
    cfg = TrainConfig(lr=1e-3, encoder_lr_scale=0.1, weight_decay=0.05)
    opt = make_optimizer(model, cfg)
    enc = {id(p) for p in model.encoders.parameters()}
    seen = 0
    for g in opt.param_groups:
        for p in g["params"]:
            seen += 1
            assert g["lr_scale"] == (0.1 if id(p) in enc else 1.0)
            assert g["weight_decay"] == (0.05 if p.dim() >= 2 else 0.0)
    assert seen == len(list(model.parameters()))


def test_precision_auto_resolves(monkeypatch):
    from mmdialog.train import trainer

    monkeypatch.setattr(trainer, "cpu_has_native_bf16", lambda: False)
    assert trainer.resolve_precision("auto") == "fp32"
    monkeypatch.setattr(trainer, "cpu_has_native_bf16", lambda: True)
    assert trainer.resolve_precision("auto") == "bf16"
    assert trainer.resolve_precision("fp32") == "fp32"
    with pytest.raises(MMDialogError, match="train.precision must be"):
        trainer.resolve_precision("fp8")
    with pytest.raises(MMDialogError, match="fp16 needs CUDA"):
        with trainer.autocast_context("fp16", "cpu"):
            pass
    assert trainer.resolve_precision("fp16", "cuda") == "fp16"


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest(tiny):
    from mmdialog.train.trainer import Optimizers, make_optimizer, muon_matrices

    model, _ = tiny
    opt = make_optimizer(model, TrainConfig(optimizer="muon", lr=1e-3, encoder_lr_scale=0.1))
    assert isinstance(opt, Optimizers)
    muon, adamw = opt.optimizers
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    in_muon = {id(p) for g in muon.param_groups for p in g["params"]}
    assert in_muon == muon_matrices(model) and in_muon
    assert id(model.decoder.tok_embeddings.weight) not in in_muon  # embedding (and the tied head): AdamW
    assert all(p.dim() == 2 for g in muon.param_groups for p in g["params"])
    enc = {id(p) for p in model.encoders.parameters()}
    assert all(g["lr_scale"] == (0.1 if id(g["params"][0]) in enc else 1.0) for g in opt.param_groups)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    emb = make_optimizer(model, TrainConfig(optimizer="muon", lr=1e-3, embed_lr_scale=10.0))
    tok = id(model.decoder.tok_embeddings.weight)
    assert [g["lr_scale"] for g in emb.param_groups if tok in map(id, g["params"])] == [10.0]
    assert [g["lr_scale"] for g in emb.param_groups] != [g["lr_scale"] for g in opt.param_groups]
    # one step, then the state survives a round trip (resume)
    model.zero_grad()
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    before = model.decoder.blocks[0].attn.qkv.weight.detach().clone()
    opt.step()
    assert not torch.equal(before, model.decoder.blocks[0].attn.qkv.weight)
    again = make_optimizer(model, TrainConfig(optimizer="muon", lr=1e-3))
    again.load_state_dict(opt.state_dict())
    assert again.state_dict()["optimizers"][0]["state"].keys() == opt.state_dict()["optimizers"][0]["state"].keys()
    with pytest.raises(MMDialogError, match="train.optimizer changed"):
        again.load_state_dict({"optimizers": [{}]})  # a checkpoint of one optimizer
    with pytest.raises(MMDialogError, match="train.optimizer must be one of adamw, muon"):
        make_optimizer(model, TrainConfig(optimizer="sgd"))


def test_time_precisions_leaves_no_gradients_and_the_rng_as_it_was(tiny, tokenizer):
    from mmdialog.data.collate import Collator
    from mmdialog.data.conversation import Conversation
    from mmdialog.objectives.lm import NextTokenObjective
    from mmdialog.train.trainer import time_precisions

    model, proc = tiny
    model.train()
    conv = Conversation().add("user", "How many?").add("assistant", "3")
    batch = Collator(tokenizer.pad_id)([proc(conv)])
    torch.manual_seed(7)
    before = torch.get_rng_state()
    times = time_precisions(NextTokenObjective(model), batch, repeats=1)
    assert set(times) == {"bf16", "fp32"} and all(0 < t < 60 for t in times.values())
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("bf16_ms,fp32_ms,want", [(10, 20, "bf16"), (20, 10, "fp32"), (9.8, 10, "fp32")])
def test_precision_auto_trains_in_the_faster_one(monkeypatch, tiny_world, tmp_path, bf16_ms, fp32_ms, want):
    from mmdialog.train import trainer
    from tests.train.conftest import run, smoke_config

    monkeypatch.setattr(trainer, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(trainer, "time_precisions", lambda objective, batch: {"bf16": bf16_ms / 1e3,
                                                                            "fp32": fp32_ms / 1e3})
    cfg = smoke_config("train.precision=auto", "train.max_steps=2")
    *_, result = run(cfg, tiny_world, tmp_path)
    assert result.precision == want  # bf16 only when it is at least 5% faster


def test_eval_every_validates_on_the_world_with_the_validator_it_is_given(tiny_world, tmp_path):
    """train.eval_every on a world: the validator train() is handed scores its val split at every N steps and at
    the end; without one train() refuses rather than skip the validation the config asks for; without a world
    (and without eval_file) eval_every alone asks for none."""
    from mmdialog.eval.validation import Validator
    from tests.train.conftest import run, smoke_config

    cfg = smoke_config("train.max_steps=4", "train.eval_every=2", "train.eval_max_records=3")
    meta = {"world": str(tiny_world)}
    *_, result = run(cfg, tiny_world, tmp_path / "given", meta=meta, validator=Validator.build)
    assert [v["step"] for v in result.validation] == [2, 4]
    assert all(v["val_turns"] > 3 and 0 <= v["val_accuracy"] <= 1 and v["val_loss"] > 0 for v in result.validation)
    log = [json.loads(x) for x in (tmp_path / "given" / "train_log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in log if "val_accuracy" in x] == [2, 4]
    with pytest.raises(MMDialogError, match="no validator"):
        run(cfg, tiny_world, tmp_path / "missing", meta=meta)
    *_, plain = run(cfg, tiny_world, tmp_path / "no_world")
    assert plain.validation == []
    with pytest.raises(MMDialogError, match="must be >= 0"):
        run(smoke_config("train.eval_every=-1"), tiny_world, tmp_path / "negative", validator=Validator.build)


def test_an_objective_outside_the_protocol_is_refused(tiny_world, tmp_path):
    from tests.train.conftest import run, smoke_config

    class Loose(torch.nn.Module):  # forward and batch_weight, but not an Objective
        def forward(self, batch):
            return torch.zeros(()), torch.ones(())

        def batch_weight(self, batch):
            return torch.ones(())

    with pytest.raises(MMDialogError, match="must subclass mmdialog.objectives.base.Objective"):
        run(smoke_config(), tiny_world, tmp_path, objective=Loose())
