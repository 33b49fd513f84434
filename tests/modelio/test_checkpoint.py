import os

import pytest
import torch

from mmdialog.config import load_config
from mmdialog.errors import MMDialogError
from mmdialog.model import build_model
from mmdialog.modelio import checkpoint as ckpt
from mmdialog.modelio import load_checkpoint, save_checkpoint
from tests.conftest import TINY


def logits(model, tokenizer):
    ids = torch.tensor([tokenizer.encode("<|user|>How many red things are there?<|end|><|assistant|>")])
    with torch.no_grad():
        return model(input_ids=ids, return_logits=True).logits


def test_roundtrip_gives_identical_logits(tiny, tokenizer, tiny_cfg, tmp_path):
    model, _ = tiny
    save_checkpoint(tmp_path / "ck", model, tokenizer, tiny_cfg, {"step": 3})
    loaded = load_checkpoint(tmp_path / "ck")
    assert loaded.meta["step"] == 3
    assert torch.equal(logits(model, tokenizer), logits(loaded.model, loaded.tokenizer))
    assert loaded.processor.image_tokens == model.num_media_tokens("image")


def test_missing_directory_and_files_are_named(tmp_path):
    with pytest.raises(MMDialogError, match="checkpoint directory not found"):
        load_checkpoint(tmp_path / "nowhere")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.yaml").write_text("{}")
    with pytest.raises(MMDialogError, match="missing model.safetensors"):
        load_checkpoint(tmp_path / "half")


def test_checkpoint_of_another_model_is_named(tiny, tokenizer, tiny_cfg, tmp_path):
    model, _ = tiny
    save_checkpoint(tmp_path / "ck", model, tokenizer, tiny_cfg, {})
    # swap in the config of a wider model: the weights no longer fit
    other = load_config(None, TINY + ["model.decoder.dim=48"])
    from mmdialog.config import save_config

    save_config(other, tmp_path / "ck" / "config.yaml")
    with pytest.raises(MMDialogError, match=r"from another model: .* has shape"):
        load_checkpoint(tmp_path / "ck")


def test_crash_mid_save_keeps_previous_checkpoint(tiny, tokenizer, tiny_cfg, tmp_path, monkeypatch):
    model, _ = tiny
    save_checkpoint(tmp_path / "ck", model, tokenizer, tiny_cfg, {"step": 1})
    real_rename = os.rename
    calls = []

    def crash_on_second(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the old checkpoint has been moved aside; the new one never arrives
            raise OSError("simulated crash")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", crash_on_second)  # the renames of atomic_directory
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path / "ck", model, tokenizer, tiny_cfg, {"step": 2})
    monkeypatch.setattr(os, "rename", real_rename)
    loaded = load_checkpoint(tmp_path / "ck")  # falls back to the intact previous checkpoint
    assert loaded.meta["step"] == 1


def test_crash_while_writing_files_leaves_checkpoint_untouched(tiny, tokenizer, tiny_cfg, tmp_path, monkeypatch):
    model, _ = tiny
    save_checkpoint(tmp_path / "ck", model, tokenizer, tiny_cfg, {"step": 1})
    monkeypatch.setattr(ckpt, "save_config", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        save_checkpoint(tmp_path / "ck", model, tokenizer, tiny_cfg, {"step": 2})
    assert load_checkpoint(tmp_path / "ck").meta["step"] == 1


def test_build_model_is_deterministic_given_seed(tokenizer, tiny_cfg):
    torch.manual_seed(1)
    a = build_model(tiny_cfg.model, vocab_size=tokenizer.vocab_size, placeholder_ids=dict(tokenizer.media_ids))
    torch.manual_seed(1)
    b = build_model(tiny_cfg.model, vocab_size=tokenizer.vocab_size, placeholder_ids=dict(tokenizer.media_ids))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
