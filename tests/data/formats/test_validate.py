import os

import numpy as np
import pytest

from mmdialog.data.conversation import Audio, Conversation, Image, Video
from mmdialog.data.formats import Checks, DataFile, MediaRoot, RecordError, check_conversation, detect_format
from mmdialog.data.formats.validate import sniff
from mmdialog.errors import MMDialogError

from .conftest import FIXTURES, MEDIA


def test_media_root_refuses_paths_that_leave_it(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (tmp_path / "secret.png").write_bytes(b"x")
    os.symlink(tmp_path / "secret.png", root / "sub" / "link.png")
    media = MediaRoot(root)
    assert media.resolve("sub/a.png", "f") == str(root / "sub" / "a.png")
    assert media.resolve(str(root / "sub" / "a.png"), "f") == str(root / "sub" / "a.png")
    assert media.resolve("file://sub/a.png", "f") == str(root / "sub" / "a.png")
    for bad in ["../secret.png", "sub/../../secret.png", str(tmp_path / "secret.png"), "sub/link.png"]:
        with pytest.raises(RecordError, match="media path leaves the media root") as e:
            media.resolve(bad, "'image'")
        assert "field 'image'" in str(e.value)
    with pytest.raises(RecordError, match="remote media are not fetched"):
        media.resolve("https://x/y.png", "f")
    with pytest.raises(RecordError, match="should be a file path"):
        media.resolve("", "f")


def test_format_detection():
    assert detect_format([{"id": 1, "image": "a.png", "conversations": []}], "f") == "llava"
    assert detect_format([{"messages": [{"role": "user", "content": "<image>hi"}]}], "f") == "sharegpt"
    assert detect_format([{"conversations": [], "images": []}], "f") == "sharegpt"
    assert detect_format([{"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}], "f") == "openai"
    assert detect_format([{"messages": [{"role": "user", "content": "hi"}]}], "f") == "openai"
    with pytest.raises(MMDialogError, match="cannot tell the format.*pass --format"):
        detect_format([{"text": "hi"}, "junk"], "f")
    for name, fmt in [("llava.json", "llava"), ("llava.jsonl", "llava"), ("sharegpt.jsonl", "sharegpt"),
                      ("openai.jsonl", "openai")]:
        assert DataFile(FIXTURES / name, media_root=MEDIA).format == fmt


def test_a_file_read_in_the_wrong_format_is_refused_record_by_record():
    report = DataFile(FIXTURES / "llava.jsonl", "openai", media_root=MEDIA).check(Checks())
    assert report.valid == 0 and "field 'messages' should be a list" in report.invalid[0].reason


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(MMDialogError, match="data file not found"):
        DataFile(tmp_path / "x.json")
    with pytest.raises(MMDialogError, match="unknown data format 'alpaca'"):
        DataFile(FIXTURES / "llava.json", "alpaca")
    with pytest.raises(MMDialogError, match="media root not found"):
        DataFile(FIXTURES / "llava.json", media_root=tmp_path / "nope")


def test_length_in_tokens_with_a_processor_else_in_characters(tiny):
    _, proc = tiny
    conv = Conversation().add("user", Image(path=str(MEDIA / "images/red.png")), "What colour?").add("assistant", "red")
    n = len(proc.expand(proc.token_ids(conv), 1))
    check_conversation(conv, Checks(processor=proc, max_length=n))
    with pytest.raises(RecordError, match=f"over the maximum length: {n} tokens"):
        check_conversation(conv, Checks(processor=proc, max_length=n - 1))
    with pytest.raises(RecordError, match="over the maximum length: 15 characters > 14"):
        check_conversation(conv, Checks(max_length=14))


def test_modalities_reserved_tokens_and_pixels():
    conv = Conversation().add("user", Audio(path=str(MEDIA / "audio/beep.wav")), "?").add("assistant", "beep")
    check_conversation(conv, Checks())
    with pytest.raises(RecordError, match="turn 0 holds audio, but the model encodes only image"):
        check_conversation(conv, Checks(modalities=frozenset({"image"})))
    with pytest.raises(RecordError, match="reserved token in text: turn 1 contains <|end|>"):
        check_conversation(Conversation().add("user", "a").add("assistant", "b<|end|>"), Checks())
    flat = Conversation().add("user", Image(pixels=np.zeros((4, 4), np.uint8)), "?").add("assistant", "x")
    with pytest.raises(RecordError, match=r"undecodable media.*not \(H, W, 3\) uint8"):
        check_conversation(flat, Checks())


def test_audio_and_video_parts():
    a, b = Audio(path=str(MEDIA / "audio/beep.wav")), Audio(data=(MEDIA / "audio/beep.wav").read_bytes(), format="wav")
    assert a.content_hash() == b.content_hash() != Video(path=str(MEDIA / "video/clip.mp4")).content_hash()
    with pytest.raises(MMDialogError, match="audio file not found"):
        Audio(path="/no/such.wav").content_hash()
    assert sniff((MEDIA / "audio/beep.wav").read_bytes()) == "wav"
    assert sniff((MEDIA / "video/clip.mp4").read_bytes()) == "mp4"
    assert sniff(b"fLaC....") == "flac" and sniff(b"ID3\x03") == "mp3" and sniff(b"hello") is None
    conv = Conversation.from_dict({"turns": [{"role": "user", "parts": [{"type": "video", "path": "v.mp4"}]}]}, root="/r")
    assert isinstance(conv.turns[0].parts[0], Video) and conv.turns[0].parts[0].path == "/r/v.mp4"
