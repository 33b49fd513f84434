import base64

import numpy as np
import pytest
from PIL import Image as PILImage

from mmdialog.data.conversation import Audio, Conversation, Image, Video
from mmdialog.data.formats import Checks, DataFile, MediaRoot, RecordError, openai
from mmdialog.data.formats.stream import iter_records
from mmdialog.errors import MMDialogError

from .conftest import FIXTURES, MEDIA, reasons, shape


def raw(line):
    return next(r for r in iter_records(FIXTURES / "openai.jsonl") if r.line == line).value


def test_fixture_faults_are_found_with_their_lines():
    report = DataFile(FIXTURES / "openai.jsonl", "auto", media_root=MEDIA).check(Checks())
    assert report.format == "openai" and (report.records, report.valid) == (9, 3)
    assert reasons(report) == {4: "missing media", 5: "undecodable media", 6: "empty reply", 7: "malformed record",
                               8: "role order broken", 9: "undecodable media"}
    assert "remote media are not fetched" in report.invalid[0].reason


def test_parts_data_uris_paths_and_audio():
    media = MediaRoot(MEDIA)
    c1 = openai.from_record(raw(1), media)
    green = np.asarray(PILImage.open(MEDIA / "images/green.png").convert("RGB"))
    assert [t.role for t in c1.turns] == ["system", "user", "assistant", "user", "assistant"]
    assert isinstance(c1.turns[1].parts[0], Image) and np.array_equal(c1.turns[1].parts[0].pixels, green)
    c2 = openai.from_record(raw(2), media)
    assert [p.path.rsplit("/", 1)[1] if isinstance(p, Image) else p.text for p in c2.turns[0].parts] == \
        ["Compare ", "red.png", " with ", "blue.png"]
    c3 = openai.from_record(raw(3), media)
    a_data, a_path = c3.turns[0].parts[0], c3.turns[2].parts[0]
    assert isinstance(a_data, Audio) and a_data.data is not None and a_data.format == "wav"
    assert a_path.path.endswith("beep.wav") and a_data.content_hash() == a_path.content_hash()


def test_round_trip():
    media = MediaRoot(MEDIA)
    for line in (1, 2, 3):
        conv = openai.from_record(raw(line), media)
        again = openai.from_record(openai.to_record(conv, media), media)
        assert shape(again) == shape(conv)
    assert openai.to_record(openai.from_record(raw(3), media), media) == raw(3)
    # canonical forms: a file:// URL is written as a path, a data URI as this PNG encoder writes it
    rec2 = openai.to_record(openai.from_record(raw(2), media), media)
    assert rec2["messages"][0]["content"][3]["image_url"]["url"] == "images/blue.png"
    rec1 = openai.to_record(openai.from_record(raw(1), media), media)
    assert rec1["messages"][1]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert openai.to_record(openai.from_record(rec1, media), media) == rec1


def test_a_conversation_from_elsewhere_becomes_a_record():
    conv = Conversation(meta={"id": "z"}).add("user", "hi").add("assistant", "yo") \
        .add("user", Audio(data=b"RIFF", format="wav"), "and?").add("assistant", "no")
    rec = openai.to_record(conv, MediaRoot(MEDIA))
    assert rec["id"] == "z" and rec["messages"][0] == {"role": "user", "content": "hi"}
    assert rec["messages"][2]["content"][0] == {"type": "input_audio", "input_audio": {
        "data": base64.b64encode(b"RIFF").decode(), "format": "wav"}}
    with pytest.raises(MMDialogError, match="hold no video parts"):
        openai.to_record(Conversation().add("user", Video(path="/v.mp4")).add("assistant", "x"), MediaRoot(MEDIA))


@pytest.mark.parametrize("content,needle", [
    ([{"type": "image_url", "image_url": {"url": "data:image/png,abc"}}], "without ';base64'"),
    ([{"type": "input_audio", "input_audio": {"data": "UklGRg=="}}], "no 'format'"),
    ([{"type": "input_audio", "input_audio": {"path": "../../x.wav"}}], "leaves the media root"),
    ([{"type": "text"}], r"content\[0\]\.text should be a string"),
    ([{"type": "image_url", "image_url": {"url": "ftp://host/x.png"}}], "remote media are not fetched"),
])
def test_bad_parts_name_the_field(content, needle):
    rec = {"messages": [{"role": "user", "content": content}, {"role": "assistant", "content": "x"}]}
    with pytest.raises(RecordError, match=needle):
        openai.from_record(rec, MediaRoot(MEDIA))


def test_tool_roles_are_refused():
    rec = {"messages": [{"role": "user", "content": "x"}, {"role": "tool", "content": "{}"}]}
    with pytest.raises(RecordError, match=r"'messages'\[1\]\.role is 'tool'"):
        openai.from_record(rec, MediaRoot(MEDIA))
