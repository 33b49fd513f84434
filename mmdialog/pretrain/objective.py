"""The pretraining mixture: a weighted sum of objectives over one batch of pairs, around a MultimodalLM.

    media (B, ...) --encoder--> (B, T_m, d_m)                                   encoded once, shared by all
    [media, prompt, caption] --fusion + decoder--> hidden (B, T, D)
        captioning:  next-token loss on the caption                             (objectives.lm)
        matching:    state at the last token of true pairs vs hard negatives    (objectives.matching)
    contrastive:     mean-pooled media vs the text tower's caption embedding    (objectives.contrastive)
    masked:          [media, prompt, caption with masks] -> the masked tokens   (objectives.masked)
    qa:              [media, question] -> answer (next-token; optional head)    (objectives.qa)

    loss = sum_k weight_k * loss_k

The text tower (pretrain.text_tower) gives the contrastive text embedding:
- decoder (default): the model's own decoder reads the caption alone (no media) and its final state at the
  caption's last token is the embedding (last-token pooling of a causal LM). What contrastive learning
  shapes is then the part that is kept: the checkpoint holds everything that was trained but the heads.
- bert: a separate BERT-style text encoder (encoders/text.py, mean pooling), as in CLIP; it is saved with
  the heads (OUT/pretrain_heads.safetensors), not in the model checkpoint.

The heads (projections, temperature, matching head, answer head, text encoder) are a module attached to the
model as `model.pretrain_heads` during training, so that the trainer optimises, checkpoints and resumes them
with the model; the recipe (recipes/pretrain.py) takes them off before the model is saved for fine-tuning.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from mmdialog.errors import MMDialogError
from mmdialog.modalities import MODALITIES
from mmdialog.objectives.contrastive import ContrastiveHeads, gather_rows, global_share, info_nce, pool_media
from mmdialog.objectives.base import Objective
from mmdialog.objectives.lm import IGNORE_INDEX, lm_loss, shift_labels
from mmdialog.objectives.masked import mask_tokens, masked_lm_loss
from mmdialog.objectives.matching import MatchingHead, matching_loss, mine_hard_negatives
from mmdialog.objectives.qa import AnswerHead, answer_class_loss

OBJECTIVES = ("contrastive", "matching", "masked", "captioning", "qa")
MEDIA_KEYS = {m.key: m.name for m in MODALITIES}  # batch key -> modality


def check_weights(weights: dict[str, float]) -> dict[str, float]:
    """The objectives with a positive weight; an unknown name or a negative weight is an error naming it."""
    for name, w in weights.items():
        if name not in OBJECTIVES:
            raise MMDialogError(f"unknown objective pretrain.objectives.{name}; known: {', '.join(OBJECTIVES)}")
        if w < 0:
            raise MMDialogError(f"pretrain.objectives.{name}={w}: weights must be >= 0")
    active = {k: float(w) for k, w in weights.items() if w > 0}
    if "matching" in active and "contrastive" not in active:
        raise MMDialogError("pretrain.objectives: matching mines its hard negatives from the contrastive "
                            "similarities; give contrastive a positive weight too")
    if not active:
        raise MMDialogError(f"pretrain.objectives gives no objective a positive weight ({weights}); "
                            f"name at least one of {', '.join(OBJECTIVES)}")
    return active


def last_positions(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) right-padded attention mask -> (B,) index of each row's last real token."""
    return mask.sum(1) - 1


def media_features(encoded: torch.Tensor) -> torch.Tensor:
    """An encode_media() output, (N, T, d) or with levels (N, L, T, d), -> (N, T, d) of the last level."""
    return encoded[:, -1] if encoded.dim() == 4 else encoded


def text_embedding(model: nn.Module, heads: "PretrainHeads", text_ids: torch.Tensor,
                   text_mask: torch.Tensor) -> torch.Tensor:
    """(B, L) caption tokens -> (B, E) unit vectors, through the text tower (see the module docstring)."""
    if heads.text_encoder is not None:
        pooled = heads.text_encoder.embed(text_ids, text_mask)  # (B, d_t) mean over real tokens
    else:
        hidden = model.hidden(text_ids, {}, attention_mask=text_mask)  # (B, L, D), no media
        pooled = hidden[torch.arange(len(text_ids), device=hidden.device), last_positions(text_mask)]
    return heads.contrastive.embed_text(pooled)


def media_embedding(model: nn.Module, heads: "PretrainHeads", media: dict[str, torch.Tensor]) -> torch.Tensor:
    """encode_media() output of one modality -> (B, E) unit vectors (mean over the encoder's tokens)."""
    (features,) = media.values()
    return heads.contrastive.embed_media(pool_media(media_features(features)))


class PretrainHeads(nn.Module):
    """The trainable parts that pretraining adds to the model; only those its objectives need are built."""

    def __init__(self, *, objectives: dict[str, float], media_dim: int, model_dim: int, embed_dim: int = 64,
                 temperature: float = 0.07, text_encoder: nn.Module | None = None, n_answers: int = 0):
        super().__init__()
        self.text_encoder = text_encoder  # None: the decoder is the text tower
        text_dim = text_encoder.dim if text_encoder is not None else model_dim
        if "contrastive" in objectives:
            self.contrastive = ContrastiveHeads(media_dim, text_dim, embed_dim, temperature)
        if "matching" in objectives:
            self.matching = MatchingHead(model_dim)
        if "qa" in objectives and n_answers:
            self.answers = AnswerHead(model_dim, n_answers)


class PretrainObjective(Objective):
    """batch (PairCollator) -> (weighted sum of the objectives, in the trainer's currency: pairs x loss; pairs).

    last_terms holds each objective's loss (and a few accuracies) of the last call, for the training log.
    """

    def __init__(self, model: nn.Module, weights: dict[str, float], *, mask_id: int, end_id: int,
                 mask_prob: float = 0.15, hard_negatives: str = "hardest"):
        super().__init__()
        self.model = model
        self.weights = check_weights(weights)
        if not hasattr(model, "pretrain_heads"):
            raise MMDialogError("the model has no pretrain_heads (attach PretrainHeads first)")
        self.mask_id, self.end_id, self.mask_prob, self.hard_negatives = mask_id, end_id, mask_prob, hard_negatives
        self.last_terms: dict[str, float] = {}

    @property
    def heads(self) -> PretrainHeads:
        return self.model.pretrain_heads

    def batch_weight(self, batch: dict) -> torch.Tensor:
        return torch.tensor(float(batch["input_ids"].shape[0]))

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        m, w = self.model, self.weights
        b = dict(batch)
        keys = [k for k in MEDIA_KEYS if k in b]
        if len(keys) != 1:
            raise MMDialogError(f"a pretraining batch holds one kind of media, this one has {keys or 'none'}")
        modality = MEDIA_KEYS[keys[0]]
        media = m.encode_media(**{keys[0]: b[keys[0]]})  # {modality: (B, T_m, d_m)}
        ids, mask, labels = b["input_ids"], b["attention_mask"], b["labels"]
        n = ids.shape[0]
        rows = torch.arange(n, device=ids.device)
        terms: dict[str, torch.Tensor] = {}
        logs: dict[str, float] = {}
        total = torch.zeros((), device=ids.device)

        hidden = m.hidden(ids, media, attention_mask=mask)  # (B, T, D): media + prompt + caption
        if "captioning" in w:
            targets = shift_labels(labels)  # (B, T)
            sup = targets != IGNORE_INDEX
            terms["captioning"] = lm_loss(m.decoder.logits(hidden[sup]), targets[sup])

        if "contrastive" in w or "matching" in w:
            media_emb = media_embedding(m, self.heads, media)  # (B, E)
            text_emb = text_embedding(m, self.heads, b["text_ids"], b["text_mask"])  # (B, E)
            same = b["text_hash"][:, None] == b["text_hash"][None, :]  # (B, B) equal captions
            if "contrastive" in w:
                all_media, _ = gather_rows(media_emb)
                all_text, _ = gather_rows(text_emb)
                all_hash, _ = gather_rows(b["text_hash"])
                scale = self.heads.contrastive.scale()
                loss = info_nce(all_media, all_text, scale, all_hash[:, None] == all_hash[None, :])
                logs["temperature"] = float(1 / scale.detach())
                # the trainer counts n pairs here; the loss is over all len(all_media) of the global batch
                total = total + w["contrastive"] * global_share(loss, n, len(all_media))
                logs["contrastive"] = float(loss.detach())

        if "matching" in w:
            if n < 2:
                raise MMDialogError("the matching objective needs at least 2 pairs per micro-batch")
            with torch.no_grad():
                sim = media_emb @ text_emb.T  # (B, B)
            neg_text, neg_media = mine_hard_negatives(sim, same, self.hard_negatives)
            # rows 0..B-1: media i with caption neg_text[i]; rows B..2B-1: media neg_media[j] with caption j
            neg_ids = torch.cat([ids[neg_text], ids])
            neg_mask = torch.cat([mask[neg_text], mask])
            neg_media_t = {modality: torch.cat([media[modality], media[modality][neg_media]])}
            neg_hidden = m.hidden(neg_ids, neg_media_t, attention_mask=neg_mask)  # (2B, T, D)
            states = torch.cat([hidden[rows, last_positions(mask)],
                                neg_hidden[torch.arange(2 * n, device=ids.device), last_positions(neg_mask)]])
            terms["matching"], acc = matching_loss(self.heads.matching(states), n)
            logs["matching_acc"] = float(acc)

        if "masked" in w:
            candidates = (labels != IGNORE_INDEX) & (ids != self.end_id)  # caption tokens, not its <|end|>
            masked_ids, targets = mask_tokens(ids, candidates, self.mask_id, self.mask_prob)
            masked_hidden = m.hidden(masked_ids, media, attention_mask=mask)  # (B, T, D)
            sel = targets != IGNORE_INDEX
            terms["masked"], acc = masked_lm_loss(m.decoder.logits(masked_hidden[sel]), targets[sel])
            logs["masked_acc"] = float(acc)

        if "qa" in w:
            terms["qa"] = self._qa(b, media, modality, logs)

        for name, loss in terms.items():
            total = total + w[name] * n * loss
            logs[name] = float(loss.detach())
        self.last_terms = logs
        return total, torch.tensor(float(n), device=ids.device)

    def _qa(self, b: dict, media: dict, modality: str, logs: dict) -> torch.Tensor:
        """Next-token loss on the answers (plus the answer head's loss when there is one); 0 without questions."""
        head = getattr(self.heads, "answers", None)
        if "qa_input_ids" not in b:  # no pair of this micro-batch has a question: keep every head in the graph
            return sum((p.sum() * 0.0 for p in head.parameters()), torch.zeros(())) if head is not None \
                else torch.zeros(())
        ids, mask, labels = b["qa_input_ids"], b["qa_attention_mask"], b["qa_labels"]
        qa_media = {modality: media[modality][b["qa_rows"]]}
        hidden = self.model.hidden(ids, qa_media, attention_mask=mask)  # (Q, Tq, D)
        targets = shift_labels(labels)
        sup = targets != IGNORE_INDEX
        loss = lm_loss(self.model.decoder.logits(hidden[sup]), targets[sup])
        if head is not None:
            first = sup.float().argmax(1)  # (Q,) the position that predicts the answer's first token
            logits = head(hidden[torch.arange(len(ids), device=ids.device), first])
            head_loss, acc = answer_class_loss(logits, b["qa_class"])
            logs["qa_generated"], logs["qa_head"], logs["qa_head_acc"] = float(loss.detach()), float(head_loss.detach()), float(acc)
            loss = loss + head_loss
        return loss
