"""An adapter for any Hugging Face causal LM (AutoModelForCausalLM) behind the interface of decoders/causal.py:

    embed(input_ids) -> (B, T, D);  forward(inputs_embeds, attention_mask=, cache=, layer_hook=) -> hidden (B, T, D)
    logits(hidden) -> (..., V);  max_seq_len, dim, num_layers

(the Decoder protocol of decoders/base.py), so MultimodalLM, the trainer and the chat session use it unchanged. The model comes from a local directory
(config.json + *.safetensors; nothing is downloaded, no pickle is loaded) or is built untrained from
`hf_config` ({model_type: llama, hidden_size: ..., ...}). An embedding table smaller than the tokenizer is
grown to it (new rows: the mean of the old ones).

mmdialog's KVCache stays the cache of record: each forward seeds an HF DynamicCache with its per-layer
keys and values (the same (B, H_kv, T, hs) layout), lets the model append, and stores the grown tensors
back. crop / clone / seq_len / snapshots therefore work as with the own decoder, and HF never writes into
a tensor a snapshot still holds (its DynamicLayer appends by concatenation).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn as nn

from mmdialog.decoders.base import Decoder
from mmdialog.encoders.hf import check_backbone_dir, config_from_dict, from_pretrained
from mmdialog.errors import MMDialogError
from mmdialog.modules import KVCache
from mmdialog.registry import DECODERS


@DECODERS.register("hf")
class HFCausalDecoder(Decoder):
    def __init__(self, *, vocab_size: int, max_seq_len: int, path: str = "", hf_config: dict[str, Any] | None = None):
        super().__init__()
        from transformers import AutoModelForCausalLM

        if bool(path) == bool(hf_config):
            raise MMDialogError("decoder 'hf' takes exactly one of model.decoder.path (a local directory) or "
                                "model.decoder.hf_config (to build one from a config)")
        if path:
            self.lm = from_pretrained(AutoModelForCausalLM, path, "decoder")
        else:
            fields = {"vocab_size": vocab_size, **hf_config}
            self.lm = AutoModelForCausalLM.from_config(config_from_dict(fields, "model.decoder.hf_config"))
        if self.lm.get_input_embeddings().num_embeddings < vocab_size:
            self.lm.resize_token_embeddings(vocab_size)
        cfg = self.lm.config
        self.base = self.lm.base_model  # the transformer without the LM head (LlamaModel, GPT2Model, ...)
        self.layers = _decoder_layers(self.base)
        self.dim, self.num_layers = cfg.hidden_size, len(self.layers)
        self.max_seq_len = min(max_seq_len, getattr(cfg, "max_position_embeddings", max_seq_len) or max_seq_len)
        params = inspect.signature(self.base.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"  # renamed in transformers 5
        self._softcap = getattr(cfg, "final_logit_softcapping", None)

    @staticmethod
    def sizes(cfg) -> tuple[int, int]:
        """(width, layers) of the model a DecoderConfig names, read from its config without building it."""
        from transformers import AutoConfig

        if cfg.path:
            d = check_backbone_dir(cfg.path, "decoder")
            hf = AutoConfig.from_pretrained(str(d), local_files_only=True)
        elif cfg.hf_config:
            hf = config_from_dict(cfg.hf_config, "model.decoder.hf_config")
        else:
            raise MMDialogError("decoder 'hf' needs model.decoder.path or model.decoder.hf_config")
        hf = getattr(hf, "get_text_config", lambda: hf)()
        return hf.hidden_size, hf.num_hidden_layers

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, D)
        return self.lm.get_input_embeddings()(input_ids)

    def blocks_in_order(self) -> nn.ModuleList:
        return self.layers

    def checkpoint_natively(self) -> bool:
        """Hugging Face's own gradient checkpointing (non-reentrant), which knows the model's layer calls."""
        self.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return True

    def forward(self, inputs_embeds: torch.Tensor, *, attention_mask: torch.Tensor | None = None,
                cache: KVCache | None = None, layer_hook=None) -> torch.Tensor:
        """inputs_embeds: (B, T, D); attention_mask: (B, T_past + T), 1 = real. Returns the final-norm hidden
        states (B, T, D). Positions continue from the cache, which is appended to."""
        from transformers import DynamicCache

        B, T, _ = inputs_embeds.shape
        past = cache.seq_len if cache is not None else 0
        if past + T > self.max_seq_len:
            raise MMDialogError(f"{past} cached + {T} new positions exceed the decoder's max_seq_len {self.max_seq_len}")
        if attention_mask is not None and attention_mask.shape != (B, past + T):
            raise MMDialogError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected ({B}, {past + T}) "
                                f"for {past} cached and {T} new positions")
        if attention_mask is not None and bool(attention_mask.all()):
            attention_mask = None
        hf_cache = None
        if cache is not None:
            seeded = list(zip(cache.keys, cache.values)) if cache.keys else None
            hf_cache = DynamicCache(seeded, config=self.lm.config)
        positions = torch.arange(past, past + T, device=inputs_embeds.device)[None].expand(B, -1)  # (B, T)
        handles = []
        if layer_hook is not None:
            for i, layer in enumerate(self.layers):
                handles.append(layer.register_forward_pre_hook(_PreHook(i, layer_hook), with_kwargs=True))
        try:
            out = self.base(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=positions,
                            use_cache=cache is not None, **{self._cache_kw: hf_cache})
        finally:
            for h in handles:
                h.remove()
        if cache is not None:
            cache.keys, cache.values = _cache_tensors(hf_cache)
        return out.last_hidden_state

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:  # (..., D) -> (..., V)
        logits = self.lm.get_output_embeddings()(hidden)
        if self._softcap:  # Gemma 2: tanh soft-capping of the logits
            logits = torch.tanh(logits / self._softcap) * self._softcap
        return logits


class _PreHook:
    """Runs layer_hook(layer, hidden) on a decoder layer's hidden-states input."""

    def __init__(self, layer: int, fn):
        self.layer, self.fn = layer, fn

    def __call__(self, module, args, kwargs):
        if args:
            return (self.fn(self.layer, args[0]), *args[1:]), kwargs
        kwargs = dict(kwargs)
        kwargs["hidden_states"] = self.fn(self.layer, kwargs["hidden_states"])
        return args, kwargs


def _decoder_layers(base: nn.Module) -> nn.ModuleList:
    for path in ("layers", "h", "decoder.layers", "blocks"):
        mod = base
        for part in path.split("."):
            mod = getattr(mod, part, None)
        if isinstance(mod, nn.ModuleList):
            return mod
    raise MMDialogError(f"cannot find the decoder layers of {type(base).__name__} (looked for layers, h, decoder.layers)")


def _cache_tensors(hf_cache) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-layer keys and values (B, H_kv, T, hs) of an HF DynamicCache (transformers 4.56+ and older)."""
    if hasattr(hf_cache, "layers"):
        return [layer.keys for layer in hf_cache.layers], [layer.values for layer in hf_cache.layers]
    return list(hf_cache.key_cache), list(hf_cache.value_cache)
