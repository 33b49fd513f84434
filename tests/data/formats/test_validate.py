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


def _verdict(part, checks=None):
    """None when the checks accept the part, else the RecordError's text."""
    try:
        check_conversation(Conversation().add("user", part, "?").add("assistant", "x"), checks or Checks())
        return None
    except RecordError as e:
        return str(e)


def test_video_is_accepted_exactly_when_the_processor_reads_it(tmp_path):
    from mmdialog.data.processor import read_frames
    from mmdialog.data.worlds.shapes.render import encode_apng
    from PIL import Image as PILImage

    frames = [PILImage.new("RGB", (8, 8), (30 * i, 90, 200)) for i in range(3)]
    (tmp_path / "clip.png").write_bytes(encode_apng(frames))
    np.save(tmp_path / "clip.npy", np.zeros((3, 8, 8, 3), np.uint8))
    np.save(tmp_path / "float.npy", np.zeros((3, 8, 8, 3), np.float32))
    (tmp_path / "broken.gif").write_bytes((MEDIA / "video/clip.gif").read_bytes()[:40])
    paths = [MEDIA / "video/clip.gif", tmp_path / "clip.png", tmp_path / "clip.npy", tmp_path / "float.npy",
             tmp_path / "broken.gif", MEDIA / "video/clip.mp4", MEDIA / "video/notes.mp4", MEDIA / "images/red.png"]
    for p in paths:
        try:
            read_frames(str(p), "v")
            readable = True
        except MMDialogError:
            readable = False
        assert (_verdict(Video(path=str(p))) is None) == readable, p
    assert [sniff(p.read_bytes()[:12]) for p in paths[:3]] == ["gif", "png", "npy"]


def test_mp4_and_mp3_are_refused_with_the_reason_and_a_conversion():
    why = _verdict(Video(path=str(MEDIA / "video/clip.mp4")))
    assert why.startswith("undecodable media: turn 0: video ") and "is MP4, which mmdialog does not decode" in why
    assert "GIF, PNG, WEBP or NPY" in why and "ffmpeg -i in.mp4" in why
    assert "is not GIF, PNG, WEBP or NPY (unknown header)" in _verdict(Video(path=str(MEDIA / "video/notes.mp4")))
    why = _verdict(Audio(data=b"ID3\x03" + bytes(40), format="mp3"))
    assert "audio data is MP3, which mmdialog does not decode (it reads audio as WAV" in why
    assert "ffmpeg -i in.mp3 -ar 16000 out.wav" in why


def test_with_a_processor_the_frame_budget_and_clip_length_are_checked(tokenizer, tmp_path):
    from mmdialog.data.processor import AudioTransform, MediaInput, Processor, VideoTransform

    proc = Processor(tokenizer, max_length=512, media={"video": MediaInput(2, VideoTransform(6, 8)),
                                                       "audio": MediaInput(2, AudioTransform(8000, 800))})
    clip = Video(path=str(MEDIA / "video/clip.gif"))  # 4 frames
    assert _verdict(clip) is None
    assert "has 4 frame(s), fewer than the 6 the video encoder takes" in _verdict(clip, Checks(processor=proc))
    from mmdialog.data.worlds.shapes.beeps import encode_wav

    (tmp_path / "long.wav").write_bytes(encode_wav(np.zeros(4000, np.int16), 8000))  # 0.5 s
    beep = Audio(path=str(tmp_path / "long.wav"))
    assert _verdict(beep) is None and _verdict(Audio(path=str(MEDIA / "audio/beep.wav")), Checks(processor=proc)) is None
    assert _verdict(beep, Checks(processor=proc)).startswith("media the model cannot encode: turn 0: audio ")
    assert "lasts 0.50 s, longer than the audio encoder's 0.10 s" in _verdict(beep, Checks(processor=proc))
