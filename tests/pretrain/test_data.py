"""Pretraining pairs: from the world, from a user's JSONL (bad records counted, never a crash), collated."""

import json

import numpy as np
import pytest
from PIL import Image as PILImage

from mmdialog.data.processor import Processor
from mmdialog.data.worlds.shapes import generate_world, load_split
from mmdialog.objectives.qa import AnswerVocab
from mmdialog.pretrain.data import (CAPTION_PROMPT, PairCollator, PairDataset, read_pairs_file, scene_caption,
                                    world_pairs)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("world")
    generate_world(d, dialogues=10, seed=3, image_size=32, progress=False)
    return d


@pytest.fixture
def processor(tiny, tokenizer):
    model, _ = tiny
    return Processor.for_model(tokenizer, model, max_length=512)


def test_scene_captions_name_every_object_in_reading_order(world):
    rec = load_split(world, "train")[0]
    cap = scene_caption(rec["scene"])
    objs = sorted(rec["scene"]["objects"], key=lambda o: (o["row"], o["col"]))
    assert cap.startswith(f"{len(objs)} shape")
    at = -1
    for o in objs:  # each object, with all four attributes, after the one before it
        at = cap.index(f"a {o['size']} {o['colour']} {o['shape']} at the {o['position']}", at + 1)


def test_world_pairs_keep_only_questions_that_need_no_history(world):
    recs = load_split(world, "train")
    pairs = world_pairs(world, "train")
    assert [p.id for p in pairs] == [r["id"] for r in recs]
    for p, r in zip(pairs, recs):
        want = [(rd["question"], rd["answer"]) for rd in r["rounds"]
                if rd["scored"] and rd["distance"] == 0 and rd["depends_on"] is None]
        assert p.qas == want and p.prompt == CAPTION_PROMPT and p.path.endswith(r["image"])
    rounds = world_pairs(world, "train", captions="round")
    assert rounds[0].text == recs[0]["rounds"][0]["answer"] \
        and rounds[0].prompt == recs[0]["rounds"][0]["question"]


def _png(path, seed=0):
    PILImage.fromarray(np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)


def _user_file(tmp_path):
    _png(tmp_path / "a.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    lines = [
        json.dumps({"image": "a.png", "text": "a red circle", "question": "What colour?", "answer": "red"}),
        "{not json",
        json.dumps({"image": "a.png"}),
        json.dumps({"image": "a.png", "audio": "b.wav", "text": "x"}),
        json.dumps({"image": "missing.png", "text": "x"}),
        json.dumps({"image": "../outside.png", "text": "x"}),
        json.dumps({"image": "a.png", "text": "x", "question": "Why?"}),
        json.dumps(["a list"]),
        json.dumps({"image": "broken.png", "text": "a broken picture", "id": "bad-pic"}),
    ]
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    return read_pairs_file(tmp_path / "pairs.jsonl")


def test_a_user_file_reports_each_bad_record_and_keeps_the_rest(tmp_path):
    records, skipped = _user_file(tmp_path)
    assert [r.id for r in records] == ["line 1", "bad-pic"] and records[0].qas == [("What colour?", "red")]
    reasons = {s.id: s.reason for s in skipped}
    assert set(reasons) == {f"pairs.jsonl line {n}" for n in (2, 3, 4, 5, 6, 7, 8)}
    assert "not valid JSON" in reasons["pairs.jsonl line 2"]
    assert "'text'" in reasons["pairs.jsonl line 3"]
    assert "exactly one of" in reasons["pairs.jsonl line 4"] and "image, audio" in reasons["pairs.jsonl line 4"]
    assert "file not found" in reasons["pairs.jsonl line 5"]
    assert "outside" in reasons["pairs.jsonl line 6"]
    assert "'question' and 'answer' go together" in reasons["pairs.jsonl line 7"]
    assert "JSON object" in reasons["pairs.jsonl line 8"]


def test_pairs_that_fail_to_process_are_skipped_not_fatal(tmp_path, processor):
    records, skipped = _user_file(tmp_path)
    ds = PairDataset.build(records, processor, skipped=skipped, progress=False)
    assert ds.ids == ["line 1"]
    assert any(s.id == "bad-pic" and "cannot read image" in s.reason for s in ds.skipped)
    assert "1 pairs (1 questions), 8 skipped" in ds.report()


def test_the_collator_lines_up_captions_media_and_questions(world, processor, tokenizer):
    pairs = world_pairs(world, "train")[:4]
    pairs[1].qas = []  # a pair without a question
    ds = PairDataset.build(pairs, processor, progress=False)
    vocab = AnswerVocab.build([a for p in pairs for _, a in p.qas])
    b = PairCollator(tokenizer.pad_id, vocab)([ds[i] for i in range(4)])
    assert b["images"].shape == (4, 3, 32, 32)
    assert b["input_ids"].shape[0] == 4 and b["text_ids"].shape[0] == 4
    for i, p in enumerate(pairs):  # the caption alone, then in the conversation as the supervised reply
        n = int(b["text_mask"][i].sum())
        assert tokenizer.decode(b["text_ids"][i, :n].tolist()) == p.text
        assert p.text in tokenizer.decode(b["labels"][i][b["labels"][i] != -100].tolist())
    assert b["qa_rows"].tolist() == [0, 2, 3]
    for row, q in zip(b["qa_rows"].tolist(), range(3)):
        question, answer = pairs[row].qas[row % len(pairs[row].qas)]  # epoch 0: question (index) mod count
        assert question in tokenizer.decode(b["qa_input_ids"][q].tolist())
        assert b["qa_class"][q].item() == vocab.encode(answer)
    assert (b["text_hash"][:, None] == b["text_hash"][None, :]).sum().item() == 4  # distinct captions


def test_each_epoch_asks_another_question(world, processor):
    ds = PairDataset.build(world_pairs(world, "train")[:1], processor, progress=False)
    n = len(ds.items[0].qas)
    asked = []
    for epoch in range(n):
        ds.set_epoch(epoch)
        asked.append(ds[0][1])
    assert sorted(asked) == list(range(n))
