import pytest

from mmdialog.data.conversation import Audio, Image, Text, Video
from mmdialog.data.formats import Checks, DataFile, MediaRoot, RecordError, sharegpt
from mmdialog.data.formats.stream import iter_records

from .conftest import FIXTURES, MEDIA, reasons, shape


def test_fixture_faults_are_found_with_their_lines():
    report = DataFile(FIXTURES / "sharegpt.jsonl", "auto", media_root=MEDIA).check(Checks())
    assert report.format == "sharegpt" and (report.records, report.valid) == (10, 3)
    assert reasons(report) == {
        4: "tag count differs from media count", 5: "role order broken", 6: "missing media", 7: "undecodable media",
        8: "undecodable media", 9: "malformed record", 10: "media path leaves the media root",
    }
    by_line = {i.line: i.reason for i in report.invalid}
    assert "2 <audio> tag(s) in 'messages' but 1 audio clip(s) in 'audios'" in by_line[4]
    assert "truncated" in by_line[8] and "function_call" in by_line[9]


def test_media_of_three_kinds_land_in_the_turn_of_their_tag():
    rec = next(r for r in DataFile(FIXTURES / "sharegpt.jsonl", media_root=MEDIA).records() if r.line == 2)
    turns = rec.conversation.turns
    assert [t.role for t in turns] == ["system", "user", "assistant", "user", "assistant"]
    assert turns[0].text == "You listen and watch."
    assert [type(p) for p in turns[1].parts] == [Audio, Text]
    assert [type(p) for p in turns[3].parts] == [Video, Image, Text]
    assert turns[3].parts[0].path.endswith("clip.gif") and turns[3].parts[1].path.endswith("green.png")


@pytest.mark.parametrize("line", [1, 2, 3])
def test_round_trip(line):
    media = MediaRoot(MEDIA)
    raw = next(r for r in iter_records(FIXTURES / "sharegpt.jsonl") if r.line == line).value
    conv = sharegpt.from_record(raw, media)
    assert sharegpt.to_record(conv, media) == raw
    assert shape(sharegpt.from_record(sharegpt.to_record(conv, media), media)) == shape(conv)


@pytest.mark.parametrize("rec,needle", [
    ({"messages": [], "conversations": []}, "both 'messages' and 'conversations'"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}, "use --format openai"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "images": "a.png"},
     "field 'images' should be a list"),
    ({"system": "s", "messages": [{"role": "system", "content": "again"}, {"role": "user", "content": "hi"},
                                  {"role": "assistant", "content": "yo"}]}, r"'messages'\[0\] is a system turn"),
    ({"messages": [{"role": "user", "content": "<image>"}, {"role": "assistant", "content": "x"}], "images": ["../x.png"]},
     "leaves the media root"),
])
def test_malformed_records_name_the_field(rec, needle):
    with pytest.raises(RecordError, match=needle):
        sharegpt.from_record(rec, MediaRoot(MEDIA))
