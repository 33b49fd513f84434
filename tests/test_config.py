from pathlib import Path

import pytest

from mmdialog.config import Config, load_config, save_config
from mmdialog.errors import MMDialogError

ROOT = Path(__file__).resolve().parent.parent
# configs/recipes/ name real backbones in local directories: tests/integration/test_recipe.py builds and trains them
# with tiny ones saved in their place
CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if "recipes" not in p.relative_to(ROOT / "configs").parts)


def test_there_are_shipped_configs():
    assert any(p.name == "demo.yaml" for p in CONFIGS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_builds(path):
    from mmdialog.model import build_model

    cfg = load_config(path)
    assert isinstance(cfg, Config)
    model = build_model(cfg.model, vocab_size=64, placeholder_ids={"image": 9, "audio": 10, "video": 11})
    encoder_tokens = model.encoders["image"].num_tokens
    if "image" not in cfg.model.encoders:
        assert encoder_tokens == (cfg.model.image.image_size // cfg.model.image.patch_size) ** 2
    # one placeholder per item for cross-attention, the query count for the resampler, else every encoder token
    expected = {"cross_attention": 1, "resampler": cfg.model.fusion.num_queries}.get(cfg.model.fusion.name, encoder_tokens)
    assert model.num_media_tokens("image") == expected


def test_overrides_are_typed():
    cfg = load_config(None, ["model.decoder.dim=64", "train.lr=1e-3", "train.betas=[0.8,0.9]", "model.decoder.tie_embeddings=false"])
    assert cfg.model.decoder.dim == 64 and isinstance(cfg.model.decoder.dim, int)
    assert cfg.train.lr == pytest.approx(1e-3)
    assert cfg.train.betas == (0.8, 0.9)
    assert cfg.model.decoder.tie_embeddings is False


def test_unknown_key_is_named():
    with pytest.raises(MMDialogError, match=r"model\.decoder\.widht.*known keys.*dim"):
        load_config(None, ["model.decoder.widht=3"])


def test_wrong_type_is_named():
    with pytest.raises(MMDialogError, match=r"train\.max_steps.*int"):
        load_config(None, ["train.max_steps=lots"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(MMDialogError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(MMDialogError, match="not valid YAML"):
        load_config(bad)


def test_save_load_roundtrip(tmp_path):
    cfg = load_config(None, ["train.max_steps=7", "model.image.patch_size=8"])
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg
