import torch

from mmdialog.chat.session import ChatSession
from tests.conftest import random_image

QUESTIONS = ["How many red things are there?", "What colour is it?", "Is there a green triangle?",
             "What about blue ones?", "How many of them are large?", "Let's call the small square Max.",
             "What colour is it?", "How many red things are there?", "Is there a green triangle?",
             "What about blue ones?", "How many of them are large?", "What colour is it?"]
IMAGE_TURNS = {0: 1, 4: 2, 7: 1, 9: 3}  # turn -> image seed; seed 1 comes back in turn 7


def scratch_reply(model, proc, conv, max_new_tokens):
    """Re-encode the whole conversation from scratch, no state kept between turns."""
    ex = proc(conv, add_generation_prompt=True)
    ids = model.generate(ex.input_ids[None], images=ex.images, max_new_tokens=max_new_tokens,
                         eos_id=proc.tokenizer.end_id)
    return proc.tokenizer.decode(ids)


def test_session_equals_reencoding_over_many_turns_with_images(tiny):
    model, proc = tiny
    session = ChatSession(model, proc, max_new_tokens=6)
    for t, q in enumerate(QUESTIONS):
        parts = [random_image(IMAGE_TURNS[t]), q] if t in IMAGE_TURNS else [q]
        session.add("user", *parts)
        expected = scratch_reply(model, proc, session.conv, 6)
        before = len(session.cached_ids)
        reply = session.generate()
        assert reply == expected, f"turn {t}"
        # only the new turn was prefilled (plus the previous reply re-fed as text)
        assert session.stats["prefill_tokens"] >= before
    assert len(session.conv.turns) == 2 * len(QUESTIONS)
    # the image sent again in turn 7 was not re-encoded
    assert session.stats["images_encoded"] == 3
    # the cache holds exactly the rendering of the whole conversation plus the assistant header
    assert session.cache.seq_len == len(session.cached_ids)


def test_new_turn_prefills_only_its_own_tokens(tiny):
    model, proc = tiny
    session = ChatSession(model, proc, max_new_tokens=3)
    session.add("user", random_image(5), "Describe the picture.")
    session.generate()
    first = session.stats["prefill_tokens"]
    reply_len = len(proc.tokenizer.encode(session.conv.turns[-1].text))
    session.add("user", "What colour is it?")
    session.generate()
    new_turn = len(proc.tokenizer.encode("<|user|>What colour is it?<|end|><|assistant|>"))
    assert session.stats["prefill_tokens"] - first == reply_len + 1 + new_turn  # reply, <|end|>, new turn
    assert first > 16  # the first turn carried the image tokens


def test_reset_clears_everything(tiny):
    model, proc = tiny
    session = ChatSession(model, proc, max_new_tokens=2)
    session.ask(random_image(1), "Describe the picture.")
    session.reset()
    assert session.cache.seq_len == 0 and session.conv.turns == [] and session.cached_ids == []
    with torch.no_grad():
        session.ask("What colour is it?")
    assert len(session.conv.turns) == 2
