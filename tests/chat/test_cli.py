import io
import json

import numpy as np
from PIL import Image as PILImage

from mmdialog.chat.cli import chat_loop
from tests.chat.reference import scratch_reply
from mmdialog.chat.sampling import SamplingParams


def run(tiny, lines, **kw):
    model, proc = tiny
    out = io.StringIO()
    session = chat_loop(model, proc, max_new_tokens=4, stdin=io.StringIO("".join(f"{l}\n" for l in lines)),
                        stdout=out, **kw)
    return session, out.getvalue()


def image_file(tmp_path, seed=0):
    path = tmp_path / f"img{seed}.png"
    PILImage.fromarray(np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
    return path


def test_chat_streams_replies_and_edits_the_conversation(tiny, tmp_path):
    img = image_file(tmp_path)
    save = tmp_path / "conv.json"
    session, out = run(tiny, [
        f"/image {img}", "Describe the picture.", "What colour is it?",
        "/retry", "/undo", "/policy last_k 1", "/policy", "How many red things are there?",
        f"/save {save}", "/reset", f"/load {save}", "Is there a green triangle?", "/quit", "never read",
    ], system="Answer briefly.")
    assert out.count("bot> ") == 5  # 4 messages + 1 retry
    assert "(image" in out and "(last exchange removed; 3 turns left)" in out and "(policy: last_k 1)" in out
    assert f"(saved 5 turns to {save})" in out and "(conversation cleared)" in out and f"(loaded 5 turns from {save})" in out
    assert [t.role for t in session.conv.turns] == ["system", "user", "assistant", "user", "assistant", "user", "assistant"]
    saved = json.loads(save.read_text())
    assert saved["turns"][1]["parts"][0] == {"type": "image", "path": str(img.resolve())}
    # the reply after /load is what re-encoding the (last_k 1) context says
    model, proc = tiny
    ctx = session.policy.apply(session.conv.prefix(6))
    assert session.conv.turns[-1].text == scratch_reply(model, proc, ctx, SamplingParams(max_new_tokens=4))


def test_chat_errors_are_one_line_and_change_nothing(tiny, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    session, out = run(tiny, [
        "/image /no/such.png", "/audio a.wav", "/policy lastk 2", "/policy last_k x", "/undo", "/retry",
        f"/load {bad}", f"/load {tmp_path / 'none.json'}", "/frobnicate", "/help", "Describe the picture.",
    ])
    errors = [l for l in out.splitlines() if "error: " in l]
    assert len(errors) == 9, out
    for needle in ["image file not found: /no/such.png", "the model has no 'audio' encoder; it has: image",
                   "unknown context policy 'lastk'", "whole number", "nothing to undo", "nothing to regenerate",
                   "does not hold a conversation", "file not found", "unknown command /frobnicate"]:
        assert needle in out, needle
    assert "/policy NAME [ARG]" in out  # /help
    assert out.count("bot> ") == 1 and len(session.conv.turns) == 2 and "Traceback" not in out


def test_audio_and_video_attach_to_the_next_message_on_a_model_that_encodes_them(tokenizer, tmp_path):
    from tests.test_model import av_model, gif, wav_bytes

    model, proc = av_model(tokenizer)
    wav = tmp_path / "beep.wav"
    wav.write_bytes(wav_bytes(0.3, 16000))
    clip = gif(tmp_path / "clip.gif", 6)
    session, out = run((model, proc), [f"/audio {wav}", f"/video {clip}", "What do you hear?", "/audio /no/such.wav"])
    assert f"(audio {wav} attached" in out and f"(video {clip} attached" in out, out
    assert "audio file not found: /no/such.wav" in out and "Traceback" not in out
    first = session.conv.turns[0]
    assert [p.type for p in first.parts] == ["audio", "video", "text"] and session.conv.turns[1].role == "assistant"
    model_ids = proc(session.conv.prefix(1), add_generation_prompt=True).input_ids.tolist()
    assert model_ids.count(tokenizer.media_ids["audio"]) == model.num_media_tokens("audio")
