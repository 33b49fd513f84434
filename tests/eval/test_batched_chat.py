"""The batched real chat gives exactly the replies of one ChatSession per dialogue."""

import pytest

from mmdialog.chat.session import ChatSession
from mmdialog.eval.batched_chat import own_history_replies, supported
from mmdialog.eval.contexts import record_image, user_parts
from mmdialog.eval.datafile import read_eval_file
from mmdialog.eval.lab import own_history_rows
from tests.eval.datafiles import write_file, write_images


def session_replies(model, proc, rec, image, max_new_tokens):
    s = ChatSession(model, proc, max_new_tokens=max_new_tokens)
    if rec.get("system"):
        s.add("system", *rec["system"])
    return [s.ask(*user_parts(rec, rd["round"], image)) for rd in rec["rounds"]]


@pytest.mark.parametrize("batch_size", [2, 64])
def test_batched_replies_equal_a_session_per_dialogue_on_the_world(tiny, world32, batch_size):
    model, proc = tiny
    world, records = world32
    assert supported(model)
    images = {r["id"]: record_image(r, world) for r in records}
    got = own_history_replies(model, proc, records, images, max_new_tokens=6, batch_size=batch_size)
    for rec in records:
        assert got[rec["id"]] == session_replies(model, proc, rec, images[rec["id"]], 6), rec["id"]


def test_batched_replies_on_file_records_with_later_images_and_a_system_turn(tiny, tmp_path):
    model, proc = tiny
    write_images(tmp_path)
    data = read_eval_file(write_file(tmp_path / "d.jsonl", "openai"), processor=proc, modalities=model.encoders.keys())
    got = own_history_replies(model, proc, data.records, {}, max_new_tokens=5, batch_size=3)
    assert [len(got[r["id"]]) for r in data.records] == [3, 2, 4]  # dialogues of different lengths in one batch
    for rec in data.records:
        assert got[rec["id"]] == session_replies(model, proc, rec, None, 5), rec["id"]
    # the lab's rows are the same whichever way they were generated
    a = own_history_rows(model, proc, data.records, {}, max_new_tokens=5, match="normalised")
    b = own_history_rows(model, proc, data.records, {}, max_new_tokens=5, match="normalised", batched=False)
    assert a == b and len(a) == 9
