"""The fusion experiment's parts: one config serves every fusion, bad settings fail before training, and the
table and plot hold every fusion and column."""

import pytest

from mmdialog.config import FusionConfig
from mmdialog.errors import MMDialogError
from mmdialog.recipes.fusion_experiment import (
    COLUMNS, FUSIONS, check_fusions, fusion_config, fusion_markdown, plot_fusions, run_config, summarise_fusions,
)


def test_each_fusion_keeps_only_the_settings_it_takes(tiny_cfg):
    base = FusionConfig(name="cross_attention", heads=2, every=2, num_queries=4, levels=(0,), gate_init=0.5)
    assert fusion_config(base, "concat") == FusionConfig(name="concat")
    assert fusion_config(base, "resampler") == FusionConfig(name="resampler", heads=2, num_queries=4)
    assert fusion_config(base, "hierarchical") == FusionConfig(name="hierarchical", levels=(0,))
    assert fusion_config(base, "interactive") == FusionConfig(name="interactive", heads=2, gate_init=0.5)
    cfg = run_config(tiny_cfg, "dynamic", seed=3, minutes=1.5)
    assert cfg.model.fusion.name == "dynamic" and (cfg.train.seed, cfg.train.max_minutes) == (3, 1.5)
    assert cfg.model.decoder == tiny_cfg.model.decoder and tiny_cfg.model.fusion.name == "concat"


def test_a_setting_that_breaks_one_fusion_fails_before_training_naming_it(tiny_cfg):
    from dataclasses import replace

    check_fusions(tiny_cfg, FUSIONS)
    bad = replace(tiny_cfg, model=replace(tiny_cfg.model, fusion=FusionConfig(levels=(0, 5))))
    with pytest.raises(MMDialogError, match=r"fusion hierarchical: model.fusion.levels asks for level 5"):
        check_fusions(bad, FUSIONS)
    with pytest.raises(MMDialogError, match="unknown fusion 'late'"):
        check_fusions(tiny_cfg, ["concat", "late"])


def _run(fusion, seed, acc):
    return {"fusion": fusion, "seed": seed, "model": {"parameters": 1000 + len(fusion), "image_tokens_in_sequence": 4,
                                                      "encoder_tokens_per_image": 4},
            "train": {"steps": 10, "tokens_per_second": 500.0, "conversations_per_second": 2.0, "final_loss": 1.5},
            "accuracy": {"overall": acc, "needs_history": acc / 2, "by_distance": {"0": acc, "1": acc, "2": None, "3+": 0.1}},
            "history_gain": {"overall": 0.05}}


def test_table_and_plot_hold_every_fusion(tmp_path):
    results = {f: [_run(f, 0, 0.2 + 0.1 * i), _run(f, 1, 0.25 + 0.1 * i)] for i, f in enumerate(FUSIONS)}
    summary = summarise_fusions(results, FUSIONS)
    summary["settings"] = {"fusions": list(FUSIONS), "seeds": [0, 1], "train_minutes_per_run": 2.0, "batch_size": 4,
                           "eval_dialogues": 5, "split": "test"}
    assert summary["fusions"]["resampler"]["accuracy"]["mean"] == pytest.approx(0.725)
    assert summary["fusions"]["resampler"]["d2"]["mean"] is None
    assert summary["fusions"]["cross_attention"]["effects"]["accuracy"]["diff"] == pytest.approx(0.1)
    md = fusion_markdown(summary)
    header = next(line for line in md.splitlines() if line.startswith("| fusion | parameters"))
    assert header == "| fusion | " + " | ".join(COLUMNS) + " |"
    for f in FUSIONS:
        assert f"| {f} | {1000 + len(f):,} | 4 | 4 | 10 | 500 |" in md
    assert "| resampler | +0.500 (z " in md and "2.0 min of training per run" in md
    assert plot_fusions(summary, tmp_path / "f.png").stat().st_size > 10_000
