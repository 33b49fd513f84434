"""MultimodalLM: media encoders + a fusion + a causal decoder, composed (never subclassed).

    images (N, 3, H, W) --encoders--> media {"image": (N, T_img, d_img)}
    input_ids (B, T) --decoder.embed--> (B, T, D) --fusion: media tokens into placeholder slots--> (B, T, D)
    --decoder blocks--> hidden (B, T, D) --lm head at supervised positions--> loss
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn

import mmdialog.decoders  # noqa: F401  (registers the decoders)
import mmdialog.encoders  # noqa: F401  (registers the encoders)
import mmdialog.fusion  # noqa: F401  (registers the fusions)
from mmdialog.config import ModelConfig
from mmdialog.errors import MMDialogError
from mmdialog.modules import KVCache
from mmdialog.objectives import IGNORE_INDEX, lm_loss, shift_labels
from mmdialog.registry import DECODERS, ENCODERS, FUSIONS


@dataclass
class ModelOutput:
    loss: torch.Tensor | None  # () mean next-token cross-entropy over supervised targets; None without labels
    logits: torch.Tensor | None  # (B, T, V) next-token logits at every position; None unless asked for
    cache: KVCache | None  # the cache passed in, now also holding these T positions
    num_target_tokens: int  # supervised targets the loss averages over (0 without labels)


class MultimodalLM(nn.Module):
    def __init__(self, *, encoders: dict[str, nn.Module], fusion: nn.Module, decoder: nn.Module,
                 placeholder_ids: dict[str, int]):
        super().__init__()
        self.encoders = nn.ModuleDict(encoders)
        self.fusion = fusion
        self.decoder = decoder
        self.placeholder_ids = dict(placeholder_ids)  # modality -> token id whose slots its media tokens fill

    def num_media_tokens(self, modality: str) -> int:
        """Tokens one media item of this modality occupies in input_ids."""
        if modality not in self.encoders:
            raise MMDialogError(f"the model has no {modality!r} encoder; it has: {', '.join(self.encoders)}")
        return self.encoders[modality].num_tokens

    def encode_media(self, images: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Raw encoder outputs by modality, e.g. {"image": (N, T_img, d_img)}; modalities not given are absent."""
        media = {}
        if images is not None:
            media["image"] = self.encoders["image"](images)
        return media

    def embed(self, input_ids: torch.Tensor, media: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, T) ids plus encoded media -> (B, T, D) decoder inputs with media tokens in their placeholder slots."""
        return self.fusion(self.decoder.embed(input_ids), input_ids, media, self.placeholder_ids)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, images: torch.Tensor | None = None,
                cache: KVCache | None = None, media_embeds: dict[str, torch.Tensor] | None = None,
                return_logits: bool | None = None) -> ModelOutput:
        """input_ids, attention_mask (1 = real), labels (-100 = no target): (B, T); images: (N, 3, H, W).

        media_embeds is a precomputed encode_media() output (a chat session encodes each image once);
        cache, when given, already holds the earlier positions and is appended to.
        return_logits defaults to True without labels and False with them.
        """
        if images is not None and media_embeds is not None:
            raise MMDialogError("pass images or media_embeds (their encoding), not both")
        if return_logits is None:
            return_logits = labels is None
        media = media_embeds if media_embeds is not None else self.encode_media(images=images)
        x = self.embed(input_ids, media)  # (B, T, D)
        hidden = self.decoder(x, attention_mask=attention_mask, cache=cache)  # (B, T, D)
        logits = self.decoder.logits(hidden) if return_logits else None  # (B, T, V)

        loss, num_targets = None, 0
        if labels is not None:
            targets = shift_labels(labels)  # (B, T)
            supervised = targets != IGNORE_INDEX  # (B, T)
            # Most positions (system prompt, user turns, media, padding) have no target: project only
            # the supervised ones onto the vocabulary, the most expensive matmul of a small model.
            sup_logits = logits[supervised] if logits is not None else self.decoder.logits(hidden[supervised])  # (N, V)
            loss = lm_loss(sup_logits, targets[supervised])
            num_targets = int(supervised.sum())
        return ModelOutput(loss=loss, logits=logits, cache=cache, num_target_tokens=num_targets)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, images: torch.Tensor | None = None, *, max_new_tokens: int,
                 eos_id: int, cache: KVCache | None = None) -> list[int]:
        """Greedy continuation of one prompt (1, T): the new token ids, ending with eos_id if it was produced.

        The prompt is prefilled once, then each step feeds one token. Afterwards the cache (a fresh
        one unless given) holds the prompt and every returned token but the last, which was never fed.
        """
        if input_ids.shape[0] != 1:
            raise MMDialogError(f"generate takes one prompt, shape (1, T); got {tuple(input_ids.shape)}")
        cache = KVCache() if cache is None else cache
        hidden = self.decoder(self.embed(input_ids, self.encode_media(images=images)), cache=cache)  # (1, T, D)
        tokens: list[int] = []
        for step in range(max_new_tokens):
            if step > 0:  # feed the previous token; the last one returned is never fed
                prev = torch.tensor([[tokens[-1]]], device=input_ids.device)  # (1, 1)
                hidden = self.decoder(self.decoder.embed(prev), cache=cache)  # (1, 1, D)
            next_id = int(self.decoder.logits(hidden[0, -1]).argmax())
            tokens.append(next_id)
            if next_id == eos_id:
                break
        return tokens


def build_model(cfg: ModelConfig, *, vocab_size: int, placeholder_ids: dict[str, int]) -> MultimodalLM:
    """The model a ModelConfig describes: parts looked up by name in the registries, sizes from the config."""
    encoders = {"image": ENCODERS.get(cfg.image.name)(**_sizes(cfg.image))}
    missing = sorted(set(encoders) - set(placeholder_ids))
    if missing:
        raise MMDialogError(f"no placeholder token id for {missing}; the tokenizer gives ids for {sorted(placeholder_ids)}")
    if cfg.decoder.vocab_size and cfg.decoder.vocab_size < vocab_size:
        raise MMDialogError(
            f"model.decoder.vocab_size={cfg.decoder.vocab_size} is smaller than the tokenizer's {vocab_size} tokens"
        )
    decoder_sizes = {**_sizes(cfg.decoder), "vocab_size": cfg.decoder.vocab_size or vocab_size}
    fusion = FUSIONS.get(cfg.fusion.name)(
        **_sizes(cfg.fusion), in_dims={m: enc.dim for m, enc in encoders.items()}, out_dim=cfg.decoder.dim
    )
    decoder = DECODERS.get(cfg.decoder.name)(**decoder_sizes)
    return MultimodalLM(encoders=encoders, fusion=fusion, decoder=decoder, placeholder_ids=placeholder_ids)


def _sizes(part_cfg) -> dict:
    """A part's config fields as keyword arguments, without the registry name that chose the part."""
    return {f.name: getattr(part_cfg, f.name) for f in dataclasses.fields(part_cfg) if f.name != "name"}


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters (tied weights count once)."""
    return sum(p.numel() for p in model.parameters())
