"""The attention hook changes nothing when off, records the true probabilities when on; explain writes its views."""

import json

import numpy as np
import torch

from mmdialog.eval.contexts import Context, record_image
from mmdialog.explain import explain_dialogue, fusion_values
from mmdialog.explain.attention import answer_attention, recording, turn_of_positions
from mmdialog.fusion.common import Fusion
from mmdialog.modules.attention import Attention, causal_mask


def test_hook_is_off_by_default_and_records_the_probabilities_sdpa_used():
    torch.manual_seed(0)
    attn = Attention(dim=32, heads=4, kv_heads=2, causal=True).eval()
    assert attn.record is None
    x = torch.randn(2, 7, 32)
    mask = causal_mask(past=0, q_len=7, padding_mask=torch.tensor([[1] * 7, [1] * 5 + [0] * 2]))
    for m in (None, mask):
        plain = attn(x, mask=m)
        attn.record = []
        recorded = attn(x, mask=m)
        (probs,) = attn.record
        attn.record = None
        assert torch.equal(plain, recorded)  # the hook never changes the output
        assert probs.shape == (2, 4, 7, 7) and torch.allclose(probs.sum(-1), torch.ones(2, 4, 7))
        assert torch.all(probs.triu(1) == 0)  # causal
        # the recorded probabilities reproduce the layer's output
        hs = 8
        _, _, v = attn.qkv(x).split([4 * hs, 2 * hs, 2 * hs], dim=-1)
        v = v.view(2, 7, 2, hs).transpose(1, 2).repeat_interleave(2, dim=1)  # (B, nh, T, hs)
        y = (probs @ v).transpose(1, 2).reshape(2, 7, 32)
        assert torch.allclose(attn.out_proj(y)[0], plain[0], atol=1e-5)
        assert torch.allclose(attn.out_proj(y)[1, :5], plain[1, :5], atol=1e-5)  # real tokens of the padded row


def test_recording_collects_every_decoder_layer_and_switches_off(tiny, world32):
    model, proc = tiny
    world, records = world32
    seq = Context().sequences(records[0], record_image(records[0], world))[0]
    ex = proc(seq.conv)
    with torch.no_grad():
        before = model(input_ids=ex.input_ids[None], images=ex.images).logits
        with recording(model.decoder) as maps:
            during = model(input_ids=ex.input_ids[None], images=ex.images).logits
    assert torch.equal(before, during)
    assert len(maps) == len(model.decoder.blocks) and all(len(v) == 1 for v in maps.values())
    assert all(m.record is None for m in model.modules() if isinstance(m, Attention))
    T = ex.input_ids.shape[0]
    layers = [v[0] for v in maps.values()]
    tok = proc.tokenizer
    rounds = answer_attention(layers, ex.input_ids.tolist(), placeholder_id=tok.media_ids["image"],
                              role_ids=tok.role_ids, end_id=tok.end_id, scored=seq.scored,
                              n_rounds=len(records[0]["rounds"]))
    assert [ra.round for ra in rounds] == [r for _, r in seq.scored]
    for ra in rounds:
        assert ra.by_layer.shape == (len(layers), len(records[0]["rounds"]) + 3)
        assert np.allclose(ra.by_layer.sum(1), 1.0, atol=1e-4)  # image + rounds + answer + other
        assert np.all(ra.by_layer[:, 2 + ra.round: 1 + len(records[0]["rounds"])] == 0)  # no later round
        assert ra.image_patches.shape == (len(layers), model.num_media_tokens("image"))
        assert np.allclose(ra.image_patches.sum(1), ra.by_layer[:, 0], atol=1e-5)
    assert layers[0].shape[-1] == T


def test_turn_of_positions():
    roles = {"system": 2, "user": 3, "assistant": 4}
    assert turn_of_positions([1, 3, 9, 9, 5, 4, 8, 5, 3, 9, 5], roles, 5) == [-1, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_explain_writes_heatmaps_and_a_report(tiny, world32, tmp_path):
    model, proc = tiny
    world, records = world32
    result = explain_dialogue(model, proc, records[1], world, tmp_path, max_new_tokens=3)
    assert result["files"] == ["attention_rounds.png", "attention_image.png"]
    for f in result["files"]:
        assert (tmp_path / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((tmp_path / "explain.json").read_text())
    assert [r["round"] for r in data["rounds"]] == [rd["round"] for rd in records[1]["rounds"] if rd["scored"]]
    for r in data["rounds"]:
        if r["depends_on"] is not None:
            assert 1 <= r["dependency_rank"] <= r["round"] and r["dependency_share"] >= 0
    md = (tmp_path / "explain.md").read_text()
    assert "![attention_rounds.png](attention_rounds.png)" in md and "exposes no gates" in md


class GatedFusion(Fusion):
    """A fusion with a gate per example, exposed through the explain hook (explain_values); wraps concat,
    whose protocol defaults it keeps."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.last = None

    def forward(self, token_embeds, input_ids, media, placeholder_ids, **kw):
        self.last = torch.sigmoid(token_embeds.mean(dim=(1, 2)))[:, None].repeat(1, 3)  # (B, 3)
        return self.inner(token_embeds, input_ids, media, placeholder_ids, **kw)

    def explain_values(self):
        return {"gate": self.last}


def test_fusion_gates_are_plotted_when_the_fusion_exposes_them(tiny, world32, tmp_path):
    model, proc = tiny
    world, records = world32
    inner = model.fusion
    assert fusion_values(inner) is None
    model.fusion = GatedFusion(inner)
    try:
        result = explain_dialogue(model, proc, records[0], world, tmp_path, max_new_tokens=3)
    finally:
        model.fusion = inner
    assert "fusion_gates.png" in result["files"] and len(result["fusion"]["gate"]) == 3
    assert "exposes no gates" not in (tmp_path / "explain.md").read_text()


def test_a_gated_built_in_fusion_gives_explain_its_gates(tokenizer, world32, tmp_path):
    """dynamic fusion's per-example weights reach explain through Fusion.explain_values: plotted and in explain.json."""
    from mmdialog.config import load_config
    from mmdialog.data.processor import Processor
    from mmdialog.model import build_model
    from tests.conftest import TINY

    world, records = world32
    cfg = load_config(None, TINY + ["model.fusion.name=dynamic", "model.fusion.levels=[0, -1]"])
    torch.manual_seed(0)
    model = build_model(cfg.model, vocab_size=tokenizer.vocab_size, placeholder_ids=dict(tokenizer.media_ids)).eval()
    result = explain_dialogue(model, Processor.for_model(tokenizer, model, max_length=512), records[0], world,
                              tmp_path, max_new_tokens=3)
    assert "fusion_gates.png" in result["files"] and (tmp_path / "fusion_gates.png").is_file()
    assert "exposes no gates" not in (tmp_path / "explain.md").read_text()
    # the first example's weights of the pass explain ran: one image, two levels, the gate at its start value
    assert np.allclose(result["fusion"]["modality weight"], [1.0])
    assert np.allclose(result["fusion"]["level weights"], [[0.5, 0.5]])
    assert json.loads((tmp_path / "explain.json").read_text())["fusion"] == result["fusion"]
