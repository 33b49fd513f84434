"""The Hugging Face causal-LM adapter on a tiny Llama built from a LlamaConfig: parity with transformers,
the KVCache bridge, padding, and the whole chat path (session replies equal re-encoding)."""

import pytest
import torch

from mmdialog.chat.sampling import SamplingParams
from mmdialog.chat.session import ChatSession
from mmdialog.config import load_config
from mmdialog.data.processor import Processor
from mmdialog.decoders import HFCausalDecoder
from mmdialog.errors import MMDialogError
from mmdialog.model import build_model
from mmdialog.modules import KVCache
from tests.chat.reference import scratch_ids
from tests.conftest import TINY, random_image

LLAMA = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256}
HF_OVERRIDES = [t for t in TINY if not t.startswith("model.decoder")] + [
    "model.decoder.name=hf", "model.decoder.max_seq_len=256",
    "model.decoder.hf_config={model_type: llama, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, "
    "num_attention_heads: 4, num_key_value_heads: 2, max_position_embeddings: 256}"]


def make(vocab=50) -> HFCausalDecoder:
    torch.manual_seed(0)
    return HFCausalDecoder(vocab_size=vocab, max_seq_len=256, hf_config=LLAMA).eval()


@torch.no_grad()
def test_logits_equal_transformers_and_the_cache_bridge_is_exact():
    dec = make()
    assert dec.dim == 32 and dec.num_layers == 2 and dec.max_seq_len == 256
    ids = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(0))
    full = dec.logits(dec(dec.embed(ids)))
    torch.testing.assert_close(full, dec.lm(input_ids=ids).logits)
    cache = KVCache()
    parts = [dec(dec.embed(ids[:, :5]), cache=cache), dec(dec.embed(ids[:, 5:6]), cache=cache),
             dec(dec.embed(ids[:, 6:]), cache=cache)]
    torch.testing.assert_close(dec.logits(torch.cat(parts, 1)), full, atol=1e-5, rtol=1e-4)
    assert cache.seq_len == 12 and len(cache.keys) == 2 and cache.keys[0].shape == (2, 2, 12, 8)
    snapshot = cache.clone()
    cache.crop(5)  # undo: the cache is mmdialog's, HF's cache is rebuilt from it every call
    torch.testing.assert_close(dec(dec.embed(ids[:, 5:6]), cache=cache), parts[1])
    assert snapshot.seq_len == 12


@torch.no_grad()
def test_right_padding_changes_no_real_position():
    dec = make()
    ids = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    out = dec(dec.embed(ids), attention_mask=mask)
    torch.testing.assert_close(out[1, :3], dec(dec.embed(ids[1:, :3]))[0], atol=1e-5, rtol=1e-4)
    with pytest.raises(MMDialogError, match=r"attention_mask has shape \(2, 4\), expected \(2, 5\)"):
        dec(dec.embed(ids), attention_mask=mask[:, :4])
    with pytest.raises(MMDialogError, match="exceed the decoder's max_seq_len 256"):
        dec(dec.embed(torch.zeros(1, 257, dtype=torch.long)))


def test_loads_from_a_directory_and_grows_the_vocabulary(tmp_path):
    dec = make(vocab=40)
    dec.lm.save_pretrained(tmp_path)
    grown = HFCausalDecoder(vocab_size=48, max_seq_len=512, path=str(tmp_path))
    assert grown.lm.get_input_embeddings().num_embeddings == 48 and grown.max_seq_len == 256
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        torch.testing.assert_close(grown.logits(grown(grown.embed(ids)))[..., :40], dec.logits(dec(dec.embed(ids))))
    with pytest.raises(MMDialogError, match="exactly one of"):
        HFCausalDecoder(vocab_size=40, max_seq_len=64)


def hf_model(tokenizer, *extra):
    cfg = load_config(None, HF_OVERRIDES + list(extra))
    torch.manual_seed(0)
    model = build_model(cfg.model, vocab_size=tokenizer.vocab_size, placeholder_ids=dict(tokenizer.media_ids)).eval()
    with torch.no_grad():  # random but decisive weights, so that greedy replies vary
        for p in model.decoder.parameters():
            p.normal_(0.0, 0.2)
    return cfg, model, Processor.for_model(tokenizer, model, max_length=256)


@pytest.mark.parametrize("fusion", [[], ["model.fusion.name=cross_attention", "model.fusion.heads=2",
                                         "model.fusion.gate_init=1.0"]], ids=["concat", "cross_attention"])
def test_chat_session_with_the_hf_decoder_equals_reencoding(tokenizer, fusion):
    cfg, model, proc = hf_model(tokenizer, *fusion)
    assert isinstance(model.decoder, HFCausalDecoder)
    params = SamplingParams(max_new_tokens=4)
    session = ChatSession(model, proc, sampling=params)
    turns = [[random_image(1), "How many red things are there?"], ["What colour is it?"],
             [random_image(2), "Is there a green triangle?"], ["What about blue ones?"]]
    for t, parts in enumerate(turns):
        session.add("user", *parts)
        expected = scratch_ids(model, proc, session.conv, params)
        session.generate()
        assert session.last.token_ids == expected, f"turn {t}"
        assert session.cache.seq_len == len(session.cached_ids)
    assert session.last.cached_tokens > 0
    if fusion:
        assert session.cache.media["cross_attention"].size == 2 * model.encoders["image"].num_tokens


def test_trains_and_checkpoints_with_the_hf_decoder(tokenizer, tmp_path):
    from mmdialog.data.collate import Collator
    from mmdialog.data.conversation import Conversation
    from mmdialog.modelio import load_checkpoint, save_checkpoint

    cfg, model, proc = hf_model(tokenizer)
    convs = [Conversation().add("user", random_image(i), "How many red things are there?").add("assistant", str(i))
             for i in range(4)]
    batch = Collator(tokenizer.pad_id)([proc(c) for c in convs])
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(5):
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    model.eval()
    save_checkpoint(tmp_path / "ck", model, tokenizer, cfg, {"step": 5})
    loaded = load_checkpoint(tmp_path / "ck")
    batch.pop("labels")
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(**batch).logits, model(**batch).logits)
