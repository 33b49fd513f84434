import numpy as np
import pytest

from mmdialog.data.conversation import Audio, Conversation, Image, Text
from mmdialog.data.formats import Checks, DataFile, MediaRoot, RecordError, llava
from mmdialog.data.formats.stream import iter_records
from mmdialog.errors import MMDialogError

from .conftest import FIXTURES, MEDIA, reasons, shape

VALID = [2, 12, 23, 86, 94]


def test_fixture_faults_are_found_with_their_lines():
    report = DataFile(FIXTURES / "llava.json", "auto", media_root=MEDIA).check(Checks(max_length=200))
    assert report.format == "llava" and report.records == 12 and report.valid == 4
    assert reasons(report) == {
        30: "role order broken", 39: "tag count differs from media count", 47: "missing media",
        55: "undecodable media", 63: "empty reply", 71: "media path leaves the media root", 79: "not valid JSON",
        86: "over the maximum length",
    }
    by_line = {i.line: i.reason for i in report.invalid}
    assert "2 <image> tag(s) in 'conversations' but 1 image(s) in 'image'" in by_line[39]
    assert "'conversations'[1] is a user turn" in by_line[30] and "purple.png" in by_line[47]


def test_jsonl_layout_and_its_faults():
    report = DataFile(FIXTURES / "llava.jsonl", "llava", media_root=MEDIA).check(Checks())
    assert (report.records, report.valid) == (6, 2)
    assert reasons(report) == {3: "not valid JSON", 5: "role order broken", 6: "malformed record",
                               7: "reserved token in text"}


def test_images_stay_where_their_tags_were():
    rec = next(r for r in DataFile(FIXTURES / "llava.json", media_root=MEDIA).records() if r.line == 12)
    turns = rec.conversation.turns
    assert [t.role for t in turns] == ["system", "user", "assistant", "user", "assistant"]
    assert [type(p).__name__ for p in turns[1].parts] == ["Image", "Text"] and turns[1].parts[0].path.endswith("red.png")
    assert [p.text if isinstance(p, Text) else p.path.rsplit("/", 1)[1] for p in turns[3].parts] == \
        ["Compare with ", "blue.png", " please."]
    assert rec.conversation.meta["record"] == {"id": "ok-two-images-two-turns"} and rec.conversation.meta["line"] == 12


@pytest.mark.parametrize("line", VALID)
def test_round_trip(line):
    media = MediaRoot(MEDIA)
    raw = next(r for r in iter_records(FIXTURES / "llava.json") if r.line == line).value
    conv = llava.from_record(raw, media)
    assert llava.to_record(conv, media) == raw  # record -> conversation -> the same record
    assert shape(llava.from_record(llava.to_record(conv, media), media)) == shape(conv)


def test_a_conversation_from_elsewhere_becomes_a_record():
    media = MediaRoot(MEDIA)
    conv = Conversation(meta={"id": "x"}).add("user", Image(path=str(MEDIA / "images/red.png")), "Which colour?") \
        .add("assistant", "red")
    rec = llava.to_record(conv, media)
    assert rec == {"id": "x", "image": "images/red.png", "conversations": [
        {"from": "human", "value": "<image>Which colour?"}, {"from": "gpt", "value": "red"}]}
    assert shape(llava.from_record(rec, media)) == shape(conv)


@pytest.mark.parametrize("conv,needle", [
    (Conversation().add("user", Image(pixels=np.zeros((4, 4, 3), np.uint8)), "?").add("assistant", "x"), "no file path"),
    (Conversation().add("user", "what is <image>?").add("assistant", "x"), "holds the tag <image>"),
    (Conversation().add("user", Audio(path="/a.wav"), "?").add("assistant", "x"), "holds no audio parts"),
    (Conversation().add("user", Image(path="/etc/x.png"), "?").add("assistant", "x"), "outside the media root"),
])
def test_what_llava_cannot_hold_is_an_error(conv, needle):
    with pytest.raises(MMDialogError, match=needle):
        llava.to_record(conv, MediaRoot(MEDIA))


@pytest.mark.parametrize("rec,needle", [
    ([1, 2], "field record should be an object"),
    ({"image": "images/red.png"}, "field 'conversations' should be a list"),
    ({"conversations": [{"from": "human", "value": None}]}, r"'conversations'\[0\].value should be a string"),
    ({"image": 3, "conversations": []}, "field 'image' should be a list"),
    ({"conversations": []}, "no user or assistant turns"),
])
def test_malformed_records_name_the_field(rec, needle):
    with pytest.raises(RecordError, match=needle):
        llava.from_record(rec, MediaRoot(MEDIA))
