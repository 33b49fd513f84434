"""The pretraining heads built from the config (pretrain.text_tower, embed_dim, temperature, qa_head) and written
beside the checkpoint: OUT/pretrain_heads.safetensors (the weights) and pretrain_heads.json (what they are)."""

from __future__ import annotations

import json
from pathlib import Path

from mmdialog.config import Config, build_part, to_dict
from mmdialog.data.tokenizer import ChatTokenizer
from mmdialog.errors import MMDialogError
from mmdialog.objectives.qa import AnswerVocab
from mmdialog.pretrain.objective import PretrainHeads

HEADS_FILE, HEADS_META = "pretrain_heads.safetensors", "pretrain_heads.json"
TEXT_ENCODER_DEFAULTS = {"name": "bert", "dim": 128, "depth": 2, "heads": 4}


def build_heads(cfg: Config, model, tokenizer: ChatTokenizer, weights: dict, modality: str,
                answer_vocab: AnswerVocab | None) -> PretrainHeads:
    pc = cfg.pretrain
    text_encoder = None
    if pc.text_tower == "bert":
        from mmdialog.registry import ENCODERS

        spec = {**TEXT_ENCODER_DEFAULTS, **pc.text_encoder}
        text_encoder = build_part(ENCODERS, spec, "pretrain.text_encoder", vocab_size=tokenizer.vocab_size,
                                  pad_id=tokenizer.pad_id)
    elif pc.text_tower != "decoder":
        raise MMDialogError(f"pretrain.text_tower must be decoder or bert, got {pc.text_tower!r}")
    if modality not in model.encoders:
        raise MMDialogError(f"the pairs hold {modality} but the model has no {modality} encoder "
                            f"(it has: {', '.join(model.encoders)})")
    return PretrainHeads(objectives=weights, media_dim=model.encoders[modality].dim, model_dim=model.decoder.dim,
                         embed_dim=pc.embed_dim, temperature=pc.temperature, text_encoder=text_encoder,
                         n_answers=len(answer_vocab) if answer_vocab is not None else 0)


def save_heads(out: Path, heads, pc, answer_vocab) -> None:
    from safetensors.torch import save_model

    save_model(heads, str(out / HEADS_FILE))
    (out / HEADS_META).write_text(json.dumps({
        "text_tower": pc.text_tower, "text_encoder": {**TEXT_ENCODER_DEFAULTS, **pc.text_encoder}
        if pc.text_tower == "bert" else None, "embed_dim": pc.embed_dim,
        "temperature": heads.contrastive.scale.temperature if hasattr(heads, "contrastive") else None,
        "answers": answer_vocab.answers if answer_vocab is not None else None,
        "config": to_dict(pc)}, indent=2))
