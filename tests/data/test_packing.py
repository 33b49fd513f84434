"""Packing several conversations into one row: attention isolated between them, positions restarted, the same
loss as padding the same conversations."""

import pytest
import torch

from mmdialog.config import load_config
from mmdialog.data.collate import Collator, pack_rows
from mmdialog.data.conversation import Conversation
from mmdialog.data.processor import Processor
from mmdialog.errors import MMDialogError
from mmdialog.model import build_model
from mmdialog.objectives.lm import NextTokenObjective
from tests.conftest import TINY, random_image


def conversation(seed: int, rounds: int) -> Conversation:
    qs = ["How many red things are there?", "What colour is it?", "Is there a green triangle?", "What about blue ones?"]
    conv = Conversation().add("user", random_image(seed), "Describe the picture.").add("assistant", "There are 5 shapes.")
    for r in range(rounds):
        conv.add("user", qs[(seed + r) % 4]).add("assistant", str((seed * 7 + r) % 10))
    return conv


@pytest.fixture
def examples(tiny):
    _, proc = tiny
    return [proc(conversation(s, r)) for s, r in [(1, 1), (2, 3), (3, 0), (4, 2)]]


def test_pack_rows_fill_few_balanced_rows():
    lengths = [5, 9, 3, 4, 6]
    rows = pack_rows(lengths, capacity=10)
    assert sorted(i for r in rows for i in r) == [0, 1, 2, 3, 4]
    assert len(rows) == 3 and all(r == sorted(r) for r in rows)
    assert sorted(sum(lengths[i] for i in r) for r in rows) == [9, 9, 9]
    lengths = [130, 120, 110, 100, 90, 80, 70, 60]  # 760 tokens: 2 rows of 380, not 500 + 260
    assert sorted(sum(lengths[i] for i in r) for r in pack_rows(lengths, capacity=500)) == [380, 380]
    with pytest.raises(MMDialogError, match="11 tokens does not fit a packed row of 10"):
        pack_rows([11], capacity=10)


def test_packed_batch_layout(examples):
    lengths = [len(e.input_ids) for e in examples]
    batch = Collator(0, pack=True, pack_length=sum(lengths))(examples)
    assert batch["input_ids"].shape == (1, sum(lengths))
    assert torch.equal(batch["segment_ids"][0], torch.repeat_interleave(torch.arange(1, 5), torch.tensor(lengths)))
    assert torch.equal(batch["position_ids"][0], torch.cat([torch.arange(n) for n in lengths]))
    assert torch.equal(batch["images"], torch.cat([e.images for e in examples]))
    assert int(batch["attention_mask"].sum()) == sum(lengths)
    padded = Collator(0)(examples)
    assert (batch["labels"] != -100).sum() == (padded["labels"] != -100).sum()


def test_no_leakage_between_packed_conversations(tiny, examples):
    """Conversation B packed after A: its logits equal B's logits alone; they stay bit for bit the same whatever
    A holds; and no gradient flows from B's logits into A's image."""
    model, proc = tiny
    a, b = examples[1], examples[0]
    na, nb = len(a.input_ids), len(b.input_ids)
    collate = Collator(0, pack=True, pack_length=na + nb)

    def logits_of(batch):
        return model(**{k: v for k, v in batch.items() if k != "labels"}, return_logits=True).logits

    with torch.no_grad():
        packed = logits_of(collate([a, b]))
        alone = model(input_ids=b.input_ids[None], images=b.images, return_logits=True).logits
        assert torch.allclose(packed[0, na:na + nb], alone[0], atol=1e-5)
        # A replaced by other content of its length (another image, other words): B's logits bit for bit
        ids = a.input_ids.clone()
        words = ids >= 20  # not special tokens (roles, <|end|>, placeholders)
        ids[words] = torch.randint(20, proc.tokenizer.vocab_size, (int(words.sum()),), generator=torch.Generator().manual_seed(0))
        other = type(a)(ids, a.labels, torch.rand_like(a.images) * 2 - 1)
        assert not torch.equal(logits_of(collate([other, b]))[0, :na], packed[0, :na])
        assert torch.equal(logits_of(collate([other, b]))[0, na:], packed[0, na:])
    batch = collate([a, b])
    images = batch.pop("images").requires_grad_(True)  # (2, 3, H, W): A's image, then B's
    logits_of({**batch, "images": images})[0, na:].sum().backward()
    assert float(images.grad[0].abs().max()) == 0.0 and float(images.grad[1].abs().max()) > 0.0


def test_packed_loss_equals_padded_loss(tiny, examples):
    model, _ = tiny
    obj = NextTokenObjective(model)
    with torch.no_grad():
        lp, wp = obj(Collator(0, pack=True, pack_length=120)(examples))
        ld, wd = obj(Collator(0)(examples))
    assert float(wp) == float(wd)
    assert float(lp) == pytest.approx(float(ld), rel=1e-5)


def test_packing_refuses_fusions_that_attend_across_a_row(tokenizer, examples):
    cfg = load_config(None, TINY + ["model.fusion.name=cross_attention"])
    model = build_model(cfg.model, vocab_size=tokenizer.vocab_size, placeholder_ids=dict(tokenizer.media_ids))
    proc = Processor(tokenizer, image_size=32, image_tokens=model.num_media_tokens("image"), max_length=512)
    exs = [proc(conversation(s, 1)) for s in (1, 2)]
    with pytest.raises(MMDialogError, match="CrossAttentionFusion attends across positions .* train.pack=false"):
        model(**Collator(0, pack=True, pack_length=512)(exs))


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_segment_attention_equals_the_block_diagonal_mask(kv_heads):
    import torch.nn.functional as F

    from mmdialog.modules import Segments, segment_mask

    torch.manual_seed(0)
    seg = torch.tensor([[1, 1, 1, 2, 2, 3, 3, 3, 3, 0], [1, 1, 1, 1, 1, 1, 2, 2, 0, 0]])  # (B=2, T=10)
    q = torch.randn(2, 4, 10, 8, requires_grad=True)
    k, v = torch.randn(2, kv_heads, 10, 8), torch.randn(2, kv_heads, 10, 8)
    got = Segments(seg).attend(q, k, v)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=segment_mask(seg), enable_gqa=kv_heads != 4)
    real = (seg > 0)[:, None, :, None]
    assert torch.allclose(got * real, want * real, atol=1e-6)
    got.sum().backward()
    assert torch.isfinite(q.grad).all() and q.grad[0, :, 9].abs().max() == 0  # padding takes no part
