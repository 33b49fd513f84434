"""The pretraining mixture on a tiny model: every objective reaches the parts it should, and nothing else."""

import json
import wave

import numpy as np
import pytest
import torch

from mmdialog.config import load_config
from mmdialog.data.processor import Processor
from mmdialog.data.worlds.shapes import generate_world
from mmdialog.errors import MMDialogError
from mmdialog.model import build_model
from mmdialog.objectives.qa import AnswerVocab
from mmdialog.pretrain.data import PairCollator, PairDataset, read_pairs_file, world_pairs
from mmdialog.pretrain.objective import PretrainHeads, PretrainObjective, check_weights
from mmdialog.pretrain.heads import TEXT_ENCODER_DEFAULTS

ALL = {"contrastive": 1.0, "matching": 0.5, "masked": 0.5, "captioning": 1.0, "qa": 1.0}


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    d = tmp_path_factory.mktemp("world")
    generate_world(d, dialogues=10, seed=5, image_size=32, progress=False)
    return world_pairs(d, "train")[:6]


def setup(tiny, tokenizer, pairs, weights, text_tower="decoder", qa_head=False):
    from mmdialog.config import build_part
    from mmdialog.registry import ENCODERS

    model, _ = tiny
    model.train()
    processor = Processor.for_model(tokenizer, model, max_length=512)
    ds = PairDataset.build(pairs, processor, progress=False)
    vocab = AnswerVocab.build([a for p in pairs for _, a in p.qas]) if qa_head else None
    text_encoder = build_part(ENCODERS, {**TEXT_ENCODER_DEFAULTS, "dim": 16, "depth": 1, "heads": 2},
                              "pretrain.text_encoder", vocab_size=tokenizer.vocab_size,
                              pad_id=tokenizer.pad_id) if text_tower == "bert" else None
    model.pretrain_heads = PretrainHeads(objectives=weights, media_dim=model.encoders["image"].dim,
                                         model_dim=model.decoder.dim, embed_dim=8, text_encoder=text_encoder,
                                         n_answers=len(vocab) if vocab else 0)
    obj = PretrainObjective(model, weights, mask_id=tokenizer.tok.token_to_id("<|bos|>"), end_id=tokenizer.end_id)
    batch = PairCollator(tokenizer.pad_id, vocab)([ds[i] for i in range(len(ds))])
    return model, obj, batch


def test_every_objective_trains_the_model_and_its_heads(tiny, tokenizer, pairs):
    model, obj, batch = setup(tiny, tokenizer, pairs, ALL, qa_head=True)
    total, weight = obj(batch)
    assert weight.item() == 6 and torch.isfinite(total)
    assert set(obj.last_terms) >= {"contrastive", "matching", "masked", "captioning", "qa", "temperature",
                                   "qa_head"}
    total.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == [], no_grad  # encoder, fusion, decoder and every head


def test_the_total_is_the_weighted_sum_of_the_terms(tiny, tokenizer, pairs):
    torch.manual_seed(0)  # the masking draws from the global generator
    _, obj, batch = setup(tiny, tokenizer, pairs, ALL)
    total, weight = obj(batch)
    expected = sum(ALL[k] * obj.last_terms[k] for k in ALL) * weight.item()
    assert total.item() == pytest.approx(expected, rel=1e-5)


def test_captioning_alone_is_the_models_own_next_token_loss(tiny, tokenizer, pairs):
    model, obj, batch = setup(tiny, tokenizer, pairs, {"captioning": 1.0})
    total, weight = obj(batch)
    ref = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                images=batch["images"]).loss
    assert (total / weight).item() == pytest.approx(ref.item(), rel=1e-5)


def test_the_bert_text_tower_is_trained_by_contrastive_learning(tiny, tokenizer, pairs):
    model, obj, batch = setup(tiny, tokenizer, pairs, {"contrastive": 1.0}, text_tower="bert")
    total, _ = obj(batch)
    total.backward()
    enc = model.pretrain_heads.text_encoder
    assert all(p.grad is not None for p in enc.parameters())
    assert model.decoder.tok_embeddings.weight.grad is None  # the decoder plays no part here


def test_matching_negatives_are_real_pairs_of_the_batch(tiny, tokenizer, pairs):
    _, obj, batch = setup(tiny, tokenizer, pairs, {"contrastive": 1.0, "matching": 1.0})
    obj(batch)
    assert 0.0 <= obj.last_terms["matching_acc"] <= 1.0 and obj.last_terms["matching"] > 0


def test_bad_weights_are_named():
    with pytest.raises(MMDialogError, match="unknown objective pretrain.objectives.itc"):
        check_weights({"itc": 1.0})
    with pytest.raises(MMDialogError, match="matching mines its hard negatives"):
        check_weights({"matching": 1.0})
    with pytest.raises(MMDialogError, match="no objective a positive weight"):
        check_weights({"qa": 0.0})
    with pytest.raises(MMDialogError, match=">= 0"):
        check_weights({"qa": -1.0})


def _wav(path, freq):
    t = np.arange(16000) / 16000
    pcm = (np.sin(2 * np.pi * freq * t) * 20000).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm.tobytes())


def test_audio_text_pairs_go_through_the_same_code(tmp_path, tokenizer):
    """Contrastive, matching and captioning on audio-text pairs, with the model of configs/tiny/multimodal.yaml."""
    from pathlib import Path

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "tiny" / "multimodal.yaml")
    torch.manual_seed(0)
    model = build_model(cfg.model, vocab_size=tokenizer.vocab_size, placeholder_ids=dict(tokenizer.media_ids))
    lines = []
    for i, f in enumerate((220, 440, 880, 1760)):
        _wav(tmp_path / f"{i}.wav", f)
        lines.append(json.dumps({"audio": f"{i}.wav", "text": f"a beep {i} of {f} hertz"}))
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines))
    records, skipped = read_pairs_file(tmp_path / "pairs.jsonl")
    assert not skipped
    processor = Processor.for_model(tokenizer, model, max_length=512)
    ds = PairDataset.build(records, processor, progress=False)
    assert ds.modality == "audio" and len(ds) == 4
    weights = {"contrastive": 1.0, "matching": 1.0, "captioning": 1.0}
    model.pretrain_heads = PretrainHeads(objectives=weights, media_dim=model.encoders["audio"].dim,
                                         model_dim=model.decoder.dim, embed_dim=8)
    obj = PretrainObjective(model, weights, mask_id=1, end_id=tokenizer.end_id)
    batch = PairCollator(tokenizer.pad_id)([ds[i] for i in range(4)])
    assert batch["audios"].shape == (4, 16000)
    total, _ = obj(batch)
    total.backward()
    # every audio encoder parameter but the level projections (used by the hierarchical fusions only)
    assert all(p.grad is not None for n, p in model.encoders["audio"].named_parameters() if "level_proj" not in n)
    assert model.encoders["image"].patch_embed.weight.grad is None
