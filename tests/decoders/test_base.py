"""The decoder protocol (decoders/base.py): the defaults a decoder gets, what each decoder overrides, and the
model refusing a decoder outside it."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from mmdialog.config import DecoderConfig
from mmdialog.decoders import CausalDecoder, Decoder, HFCausalDecoder
from mmdialog.errors import MMDialogError
from mmdialog.model import MultimodalLM, build_model
from mmdialog.train.strategies import enable_gradient_checkpointing
from tests.decoders.test_causal import make_decoder
from tests.decoders.test_hf import make as make_hf


class Plain(Decoder):
    """A decoder that overrides nothing of the protocol but what it must."""

    def __init__(self):
        super().__init__()
        self.dim, self.num_layers, self.max_seq_len = 8, 1, 16
        self.emb = nn.Embedding(10, 8)

    def embed(self, input_ids):
        return self.emb(input_ids)

    def forward(self, inputs_embeds, *, attention_mask=None, cache=None, layer_hook=None):
        return inputs_embeds


def test_the_defaults_are_a_decoder_without_packing_positions_or_blocks():
    dec = Plain()
    assert dec.supports_packing is False and dec.supports_cached_positions is False
    assert Plain.sizes(DecoderConfig()) is None and list(dec.blocks_in_order()) == []
    assert dec.checkpoint_natively() is False
    with pytest.raises(NotImplementedError, match="Plain must define logits"):
        dec.logits(torch.zeros(1, 8))
    with pytest.raises(MMDialogError, match="decoder Plain has no blocks to checkpoint"):
        enable_gradient_checkpointing(SimpleNamespace(decoder=dec))


def test_the_own_decoder_packs_takes_row_positions_and_gives_its_blocks():
    dec = make_decoder()
    assert isinstance(dec, Decoder)
    assert CausalDecoder.supports_packing and CausalDecoder.supports_cached_positions
    assert dec.blocks_in_order() is dec.blocks and len(dec.blocks) == 2
    assert dec.checkpoint_natively() is False
    assert CausalDecoder.sizes(DecoderConfig(dim=48, depth=3)) == (48, 3)


def test_the_hf_decoder_checkpoints_natively_and_takes_neither_packed_rows_nor_row_positions():
    dec = make_hf()
    assert isinstance(dec, Decoder)
    assert not HFCausalDecoder.supports_packing and not HFCausalDecoder.supports_cached_positions
    assert dec.blocks_in_order() is dec.layers and len(dec.layers) == 2
    assert not dec.lm.is_activation_checkpointing
    assert dec.checkpoint_natively() is True and dec.lm.is_activation_checkpointing


def test_a_decoder_outside_the_protocol_is_refused(tiny_cfg, tokenizer):
    model = build_model(tiny_cfg.model, vocab_size=tokenizer.vocab_size, placeholder_ids=dict(tokenizer.media_ids))
    with pytest.raises(MMDialogError, match="must subclass mmdialog.decoders.base.Decoder"):
        MultimodalLM(encoders=dict(model.encoders), fusion=model.fusion, decoder=nn.Identity(),
                     placeholder_ids=model.placeholder_ids)
