"""The HTML report over tiny run directories: one self-contained page."""

import json
import re

import pytest

from mmdialog.errors import MMDialogError
from mmdialog.eval.lab import run_lab
from mmdialog.eval.report import build_report, markdown_to_html
from mmdialog.eval.run import write_outputs
from mmdialog.explain import explain_dialogue


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tokenizer, tiny_cfg, world32):
    """Two run directories as training + eval + explain leave them (tiny random models)."""
    import torch

    from mmdialog.data.processor import Processor
    from mmdialog.model import build_model

    world, records = world32
    dirs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = build_model(tiny_cfg.model, vocab_size=tokenizer.vocab_size,
                            placeholder_ids=dict(tokenizer.media_ids)).eval()
        proc = Processor(tokenizer, image_size=32, image_tokens=model.num_media_tokens("image"), max_length=512)
        d = tmp_path_factory.mktemp(f"run{seed}")
        res = run_lab(model, proc, records[:2], world, max_new_tokens=3, ablations=("no_history", "no_media"),
                      own_history=1 - seed, ranking=1 - seed, progress=False)
        write_outputs(res, res.metrics, d / "eval", title="tiny")
        (d / "train_log.jsonl").write_text("\n".join(json.dumps({"step": s, "loss": 5.0 / s}) for s in (1, 2, 3)) + "\n")
        if seed == 0:
            explain_dialogue(model, proc, records[0], world, d / "explain", max_new_tokens=3)
        dirs.append(d)
    return dirs


def test_report_is_one_self_contained_page(runs, tmp_path):
    out = build_report(runs, tmp_path / "report.html")
    page = out.read_text()
    assert page.startswith("<!doctype html>") and page.endswith("</html>")
    assert not re.search(r'src="(?!data:image/png;base64,)', page)  # every image inline
    for section in ("Comparison", "Training curves", "Accuracy with the gold history", "Gold history vs the model",
                    "Ablations", "Ranking candidate answers", "Where the answers look"):
        assert section in page, section
    # comparison plot + losses + per run (accuracy, ablations) + the explain heatmaps
    assert page.count("data:image/png;base64,") >= 2 + 2 * 2 + 2
    assert page.count('class="run"') == 2


def test_report_of_one_run_has_no_comparison(runs, tmp_path):
    page = build_report(runs[:1], tmp_path / "one.html").read_text()
    assert "Comparison" not in page and "Training curves" in page


def test_report_errors_are_clear(tmp_path):
    with pytest.raises(MMDialogError, match="run directory not found"):
        build_report([tmp_path / "nope"], tmp_path / "r.html")
    with pytest.raises(MMDialogError, match="nothing to report"):
        build_report([tmp_path], tmp_path / "r.html")


def test_markdown_subset():
    html = markdown_to_html("# T\n\n| a | b |\n|---|---|\n| `x` | **y** |\n\ntext & more\n- item", {})
    assert "<h2>T</h2>" in html and "<td><code>x</code></td><td><b>y</b></td>" in html
    assert "text &amp; more" in html and "• item" in html
