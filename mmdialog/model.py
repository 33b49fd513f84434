"""MultimodalLM: media encoders + a fusion + a causal decoder, composed (never subclassed).

    images (N, 3, H, W), audios (N, S), videos (N, F, 3, H, W) --encoders--> media {"image": (N, T_img, d_img), ...}
    input_ids (B, T) --decoder.embed (+ the user-turn reader's feature on user-turn tokens, when the model has
    one: encoders/reader.py)--> (B, T, D) --fusion (e.g. media tokens into placeholder slots)--> (B, T, D)
    --decoder blocks (a fusion may add layers between them)--> hidden (B, T, D) --lm head at supervised positions--> loss
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

import mmdialog.decoders  # noqa: F401  (registers the decoders)
import mmdialog.encoders  # noqa: F401  (registers the encoders)
import mmdialog.fusion  # noqa: F401  (registers the fusions)
from mmdialog.config import DecoderConfig, FusionConfig, ImageEncoderConfig, ModelConfig, build_part
from mmdialog.decoders.base import Decoder
from mmdialog.encoders.reader import TurnReader
from mmdialog.errors import MMDialogError
from mmdialog.fusion.common import Fusion
from mmdialog.modalities import MODALITIES, NAMES
from mmdialog.modules import KVCache
from mmdialog.objectives.lm import shift_labels, target_weights
from mmdialog.registry import DECODERS, ENCODERS, FUSIONS


@dataclass
class ModelOutput:
    loss: torch.Tensor | None  # () mean next-token cross-entropy over supervised targets (weighted by loss_weights
    #                            when given): loss_sum / target_weight, 0 without targets; None without labels
    logits: torch.Tensor | None  # (B, T, V) next-token logits at every position, (B, k, V) at the last k with
    #                              logits_to_keep=k, (B, 1, V) with logits_at; None unless asked for
    cache: KVCache | None  # the cache passed in, now also holding these T positions
    num_target_tokens: int  # supervised targets the loss averages over (0 without labels)
    loss_sum: torch.Tensor | None = None  # () sum of the targets' weighted cross-entropies; None without labels
    target_weight: torch.Tensor | None = None  # () sum of the targets' weights (their count without loss_weights)


class MultimodalLM(nn.Module):
    def __init__(self, *, encoders: dict[str, nn.Module], fusion: Fusion, decoder: Decoder,
                 placeholder_ids: dict[str, int], reader: TurnReader | None = None):
        super().__init__()
        if not isinstance(fusion, Fusion):
            raise MMDialogError(f"the fusion must subclass mmdialog.fusion.common.Fusion (the fusion protocol); "
                                f"got {type(fusion).__name__}")
        if not isinstance(decoder, Decoder):
            raise MMDialogError(f"the decoder must subclass mmdialog.decoders.base.Decoder (the decoder protocol); "
                                f"got {type(decoder).__name__}")
        self.encoders = nn.ModuleDict(encoders)
        self.fusion = fusion
        self.decoder = decoder
        self.placeholder_ids = dict(placeholder_ids)  # modality -> token id whose slots its media tokens fill
        self.reader = reader  # the user-turn reader (encoders/reader.py), or None

    def num_media_tokens(self, modality: str) -> int:
        """Tokens one media item of this modality occupies in input_ids (the fusion decides: the encoder's
        token count for concat, 1 for cross-attention, the query count for the resampler)."""
        if modality not in self.encoders:
            raise MMDialogError(f"the model has no {modality!r} encoder; it has: {', '.join(self.encoders)}")
        tokens = self.encoders[modality].num_tokens
        return self.fusion.media_slots(modality, tokens)

    def encode_media(self, images: torch.Tensor | None = None, audios: torch.Tensor | None = None,
                     videos: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Raw encoder outputs by modality, e.g. {"image": (N, T_img, d_img)}; modalities not given are absent.

        images (N, 3, H, W), audios (N, samples), videos (N, F, 3, H, W). A fusion that asks for encoder
        levels gets (N, L, T, d) instead: the encoder's forward_levels at those depths.
        """
        levels = self.fusion.levels
        given = {"images": images, "audios": audios, "videos": videos}  # the modality table's batch keys
        media = {}
        for m in MODALITIES:
            x = given[m.key]
            if x is None:
                continue
            if m.name not in self.encoders:
                raise MMDialogError(f"{m.key} given but the model has no {m.name} encoder; "
                                    f"it has: {', '.join(self.encoders)}")
            enc = self.encoders[m.name]
            media[m.name] = enc.forward_levels(x, levels) if levels is not None else enc(x)
        return media

    def embed(self, input_ids: torch.Tensor, media: dict[str, torch.Tensor], *, cache: KVCache | None = None,
              past: int = 0, reader: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """(B, T) ids plus encoded media -> (B, T, D) decoder inputs with media tokens in their placeholder slots.

        cache/past: for a fusion that keeps state across cached passes (interactive); others ignore them.
        reader: {reader_ids, reader_mask, reader_index} (see forward); each user-turn token gets its turn's
        reader feature added.
        """
        token_embeds = self.decoder.embed(input_ids)
        if reader:
            if self.reader is None:
                raise MMDialogError("reader_ids/reader_index given but the model has no user-turn reader "
                                    "(model.reader)")
            token_embeds = self.reader.add_to(token_embeds, reader["reader_ids"], reader["reader_mask"],
                                              reader["reader_index"])
        if self.fusion.uses_cache:
            return self.fusion(token_embeds, input_ids, media, self.placeholder_ids, cache=cache, past=past)
        return self.fusion(token_embeds, input_ids, media, self.placeholder_ids)

    def hidden(self, input_ids: torch.Tensor, media: dict[str, torch.Tensor] | None = None, *,
               attention_mask: torch.Tensor | None = None, cache: KVCache | None = None,
               position_ids: torch.Tensor | None = None, segment_ids: torch.Tensor | None = None,
               reader: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Fusion + decoder: (B, T) ids and encoded media -> final hidden states (B, T, D).

        With a cache, input_ids are the positions after the cached ones, media the items whose placeholders
        they hold; the cache (and any fusion memory in it) is appended to.
        position_ids, segment_ids (B, T): packed rows (data.collate.Collator with pack=True), several
        conversations per row, each attending only to itself (segment ids 1, 2, ...; 0 = padding) with its
        positions restarting at 0. reader: the user-turn reader's inputs (see forward).
        """
        media = media or {}
        packed = {}
        if segment_ids is not None or position_ids is not None:
            if self.fusion.mixes_positions:
                raise MMDialogError(f"packed rows (position_ids/segment_ids) need a fusion that only fills placeholder "
                                    f"slots; {type(self.fusion).__name__} attends across positions of a row, which "
                                    f"would mix the packed conversations: train with train.pack=false")
            if not self.decoder.supports_packing:
                raise MMDialogError(f"decoder {type(self.decoder).__name__} does not take packed rows; "
                                    f"train with train.pack=false")
            packed = {"position_ids": position_ids, "segment_ids": segment_ids}
        past = cache.seq_len if cache is not None else 0  # before the decoder runs: it grows the cache
        x = self.embed(input_ids, media, cache=cache, past=past, reader=reader)  # (B, T, D)
        hook = self.fusion.decoder_hook(input_ids, media, self.placeholder_ids, cache=cache, past=past)
        if hook is None:
            return self.decoder(x, attention_mask=attention_mask, cache=cache, **packed)
        return self.decoder(x, attention_mask=attention_mask, cache=cache, layer_hook=hook)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, images: torch.Tensor | None = None,
                cache: KVCache | None = None, media_embeds: dict[str, torch.Tensor] | None = None,
                return_logits: bool | None = None, audios: torch.Tensor | None = None,
                videos: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                segment_ids: torch.Tensor | None = None, loss_weights: torch.Tensor | None = None,
                logits_to_keep: int | None = None, reader_ids: torch.Tensor | None = None,
                reader_mask: torch.Tensor | None = None, reader_index: torch.Tensor | None = None,
                logits_at: torch.Tensor | None = None) -> ModelOutput:
        """input_ids, attention_mask (1 = real), labels (-100 = no target): (B, T); images: (N, 3, H, W);
        audios: (N, samples); videos: (N, F, 3, H, W); position_ids, segment_ids (B, T): packed rows (see hidden);
        loss_weights (B, T): the weight of each token's message in the loss (collator, train.loss_turns=weighted).
        reader_ids, reader_mask (N, L): the user-turn reader's tokens of the N user turns of the batch;
        reader_index (B, T): the turn (row of reader_ids) each token belongs to, -1 outside user turns
        (all three from the processor and collator of a model with a reader; absent: no reader features).

        media_embeds is a precomputed encode_media() output (a chat session encodes each item once);
        cache, when given, already holds the earlier positions and is appended to.
        return_logits defaults to True without labels and False with them; logits_to_keep=k projects only
        the last k positions (a prefill needs the last one); logits_at (B,) projects one position per row,
        logits (B, 1, V) (rows of different lengths, padded after their tokens: each row's last one).
        """
        raw = {"images": images, "audios": audios, "videos": videos}
        if media_embeds is not None and any(v is not None for v in raw.values()):
            raise MMDialogError("pass images/audios/videos or media_embeds (their encoding), not both")
        if loss_weights is not None and labels is None:
            raise MMDialogError("loss_weights weigh the labels' targets: pass labels too")
        if return_logits is None:
            return_logits = labels is None
        if logits_at is not None and logits_to_keep is not None:
            raise MMDialogError("pass logits_to_keep (the last k positions) or logits_at (one per row), not both")
        media = media_embeds if media_embeds is not None else self.encode_media(**raw)
        reader = None
        if reader_index is not None:
            if reader_ids is None or reader_mask is None:
                raise MMDialogError("reader_index needs reader_ids and reader_mask")
            reader = {"reader_ids": reader_ids, "reader_mask": reader_mask, "reader_index": reader_index}
        hidden = self.hidden(input_ids, media, attention_mask=attention_mask, cache=cache, position_ids=position_ids,
                             segment_ids=segment_ids, reader=reader)  # (B, T, D)
        logits = None
        if return_logits:
            if logits_at is not None:
                rows = torch.arange(hidden.shape[0], device=hidden.device)
                kept = hidden[rows, logits_at.to(hidden.device)][:, None]  # (B, 1, D)
            else:
                kept = hidden if logits_to_keep is None else hidden[:, -logits_to_keep:]
            logits = self.decoder.logits(kept)  # (B, T, V); (B, k, V) or (B, 1, V) when kept
        if labels is None:
            return ModelOutput(loss=None, logits=logits, cache=cache, num_target_tokens=0)

        w = target_weights(labels, loss_weights)  # (B, T): 0 where position t has no target
        supervised = w > 0  # (B, T)
        num_targets = int(supervised.sum())
        # Most positions (system prompt, user turns, media, padding) have no target: project only
        # the supervised ones onto the vocabulary, the most expensive matmul of a small model.
        full = logits is not None and logits_to_keep is None and logits_at is None
        sup_logits = logits[supervised] if full else self.decoder.logits(hidden[supervised])  # (N, V)
        # fp32: a bf16 log-softmax over a large vocabulary is visibly off
        ce = F.cross_entropy(sup_logits.float(), shift_labels(labels)[supervised], reduction="none")  # (N,)
        loss_sum, weight = (ce * w[supervised]).sum(), w.sum()
        loss = loss_sum / torch.where(weight > 0, weight, 1.0)  # 0, still in the graph, without targets
        return ModelOutput(loss=loss, logits=logits, cache=cache, num_target_tokens=num_targets, loss_sum=loss_sum,
                           target_weight=weight)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, images: torch.Tensor | None = None, *, max_new_tokens: int,
                 eos_id: int, cache: KVCache | None = None, audios: torch.Tensor | None = None,
                 videos: torch.Tensor | None = None) -> list[int]:
        """Greedy continuation of one prompt (1, T): the new token ids, ending with eos_id if it was produced;
        never a media placeholder id.

        The prompt is prefilled once, then each step feeds one token. Afterwards the cache (a fresh
        one unless given) holds the prompt and every returned token but the last, which was never fed.
        """
        if input_ids.shape[0] != 1:
            raise MMDialogError(f"generate takes one prompt, shape (1, T); got {tuple(input_ids.shape)}")
        cache = KVCache() if cache is None else cache
        logits = self(input_ids, images=images, audios=audios, videos=videos, cache=cache,
                      logits_to_keep=1).logits[:, -1]  # (1, V)
        # a placeholder token fed back would ask for a media item that is not there: never generated
        banned = torch.tensor(sorted(set(self.placeholder_ids.values())), dtype=torch.long, device=input_ids.device)

        def greedy(logits: torch.Tensor, replies: list[list[int]]) -> list[int]:  # logits (1, V)
            logits = logits.clone()
            logits[:, banned[banned < logits.shape[-1]]] = float("-inf")
            return logits.argmax(-1).tolist()

        def feed(rows: list[int], tokens: list[int]) -> torch.Tensor:  # cross-attention still sees the media: cached
            return self(torch.tensor([tokens], device=input_ids.device), cache=cache, logits_to_keep=1).logits[:, -1]

        steps = decode(logits, greedy, feed, max_new_tokens=max_new_tokens, end_id=eos_id)
        return [token for step in steps for _, token in step]


def decode(logits: torch.Tensor, choose: Callable[[torch.Tensor, list[list[int]]], list[int]],
           feed: Callable[[list[int], list[int]], torch.Tensor], *, max_new_tokens: int | Sequence[int],
           end_id: int | None = None) -> Iterator[list[tuple[int, int]]]:
    """The decode loop (MultimodalLM.generate, chat sessions and the batched chat): R rows in lockstep.

    logits (R, V): each row's next-token logits. Each step, choose(logits (A, V) of the A rows still going,
    their tokens so far) gives one token per row (greedy, sampled: the caller decides), the step's
    (row, token) pairs are yielded, and the rows that go on are fed: feed(rows, tokens) -> their next-token
    logits (A', V). A row ends after end_id or after its max_new_tokens tokens (one limit for every row, or
    one per row); the loop ends when every row has.

    Rows are fed only when the consumer asks for the next step, so a row's last token is never fed, and a
    consumer that stops early (a stop string) feeds nothing more.
    """
    limits = [max_new_tokens] * logits.shape[0] if isinstance(max_new_tokens, int) else list(max_new_tokens)
    replies: list[list[int]] = [[] for _ in limits]
    going = [r for r, n in enumerate(limits) if n > 0]
    if len(going) < len(limits):
        logits = logits[going]
    while going:
        tokens = choose(logits, [replies[r] for r in going])
        yield list(zip(going, tokens))  # the consumer may stop here
        on = []
        for r, token in zip(going, tokens):
            replies[r].append(token)
            if token != end_id and len(replies[r]) < limits[r]:
                on.append((r, token))
        if not on:
            return
        going = [r for r, _ in on]
        logits = feed(going, [token for _, token in on])


def build_model(cfg: ModelConfig, *, vocab_size: int, placeholder_ids: dict[str, int]) -> MultimodalLM:
    """The model a ModelConfig describes: parts looked up by name in the registries, sizes from the config.

    Encoders come from model.encoders (modality -> {name, ...}) and, for images unless encoders names one,
    from model.image. The decoder is built first: the fusion takes its width and depth.
    """
    encoders = {}
    if "image" in cfg.encoders and cfg.image != ImageEncoderConfig():
        raise MMDialogError("the image encoder is set twice, in model.image and model.encoders.image; keep one")
    if "image" not in cfg.encoders:
        encoders["image"] = _build_from_fields(ENCODERS, cfg.image, ImageEncoderConfig(), "model.image")
    for modality, spec in cfg.encoders.items():
        if modality not in NAMES:
            raise MMDialogError(f"model.encoders.{modality}: media encoders exist for {', '.join(NAMES)} "
                                f"(text encoders are used on their own: the decoder reads the text)")
        if not isinstance(spec, dict):
            raise MMDialogError(f"model.encoders.{modality} must be a mapping {{name: ..., ...}}, got {spec!r}")
        encoders[modality] = build_part(ENCODERS, spec, f"model.encoders.{modality}")
    missing = sorted(set(encoders) - set(placeholder_ids))
    if missing:
        raise MMDialogError(f"no placeholder token id for {missing}; the tokenizer gives ids for {sorted(placeholder_ids)}")
    if cfg.decoder.vocab_size and cfg.decoder.vocab_size < vocab_size:
        raise MMDialogError(
            f"model.decoder.vocab_size={cfg.decoder.vocab_size} is smaller than the tokenizer's {vocab_size} tokens"
        )
    def build_decoder():
        return _build_from_fields(DECODERS, cfg.decoder, DecoderConfig(), "model.decoder",
                                  vocab_size=cfg.decoder.vocab_size or vocab_size)

    # Parts are built in the order encoders, fusion, decoder (the order their random initial weights are
    # drawn in); the fusion needs the decoder's width and depth, which its class tells without building it.
    sizes = DECODERS.get(cfg.decoder.name).sizes(cfg.decoder)
    decoder = None if sizes is not None else build_decoder()
    dim, depth = sizes if sizes is not None else (decoder.dim, decoder.num_layers)
    fusion = _build_from_fields(FUSIONS, cfg.fusion, FusionConfig(), "model.fusion",
                                in_dims={m: enc.dim for m, enc in encoders.items()}, out_dim=dim, num_layers=depth)
    decoder = decoder if decoder is not None else build_decoder()
    reader = None
    if cfg.reader:  # built last: a model without a reader draws the same initial weights as before
        spec = dict(cfg.reader)
        cache_size = int(spec.pop("cache_size", 200_000))
        reader = TurnReader(build_part(ENCODERS, spec, "model.reader"), decoder.dim, cache_size=cache_size)
    return MultimodalLM(encoders=encoders, fusion=fusion, decoder=decoder, placeholder_ids=placeholder_ids,
                        reader=reader)


def _build_from_fields(registry, part_cfg, defaults, where: str, **given):
    """A registered part from a config dataclass: the fields its signature takes (and `given`, which
    override them); a field it does not take is an error when set away from its default."""
    cls = registry.get(part_cfg.name)
    takes = set(inspect.signature(cls).parameters)
    spec = {"name": part_cfg.name}
    for f in dataclasses.fields(part_cfg):
        if f.name == "name" or f.name in given:
            continue
        value = getattr(part_cfg, f.name)
        if f.name in takes:
            spec[f.name] = value
        elif value != getattr(defaults, f.name):
            raise MMDialogError(f"{where}.{f.name} is set but {registry.kind} {part_cfg.name!r} does not use it; "
                                f"it takes: {', '.join(sorted(takes - set(given))) or 'nothing'}")
    return build_part(registry, spec, where, **given)


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters (tied weights count once)."""
    return sum(p.numel() for p in model.parameters())
