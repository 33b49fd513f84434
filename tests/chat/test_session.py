import pytest
import torch

from mmdialog.chat.policies import LastK, Summary, TokenBudget
from mmdialog.chat.sampling import SamplingParams
from mmdialog.chat.session import ChatSession
from mmdialog.data.conversation import Image
from mmdialog.errors import MMDialogError
from tests.chat.reference import scratch_ids, scratch_reply
from tests.conftest import random_image

QUESTIONS = ["How many red things are there?", "What colour is it?", "Is there a green triangle?",
             "What about blue ones?", "How many of them are large?", "Let's call the small square Max.",
             "What colour is it?", "How many red things are there?", "Is there a green triangle?",
             "What about blue ones?", "How many of them are large?", "What colour is it?"]
IMAGE_TURNS = {0: 1, 4: 2, 7: 1, 9: 3}  # turn -> image seed; seed 1 comes back in turn 7
GREEDY = SamplingParams(max_new_tokens=6)


def user_parts(t):
    q = QUESTIONS[t % len(QUESTIONS)]
    return [random_image(IMAGE_TURNS[t]), q] if t in IMAGE_TURNS else [q]


def state(s: ChatSession):
    return ([(t.role, [vars(p).get("text", id(p)) for p in t.parts]) for t in s.conv.turns], list(s.cached_ids),
            list(s.cached_media), s.cache.seq_len, [k.data_ptr() for k in s.cache.keys])


def test_session_equals_reencoding_over_many_turns_with_images(tiny):
    model, proc = tiny
    session = ChatSession(model, proc, sampling=GREEDY)
    for t in range(len(QUESTIONS)):
        session.add("user", *user_parts(t))
        expected = scratch_ids(model, proc, session.conv, GREEDY)
        reply = session.generate()
        assert session.last.token_ids == expected, f"turn {t}"
        assert reply == proc.tokenizer.decode(expected)
        # the cache holds exactly the tokens the session says it holds
        assert session.cache.seq_len == len(session.cached_ids)
    assert len(session.conv.turns) == 2 * len(QUESTIONS)
    assert session.stats["images_encoded"] == 3  # the image sent again in turn 7 was not re-encoded


def test_sampled_session_equals_reencoding_with_the_same_seed(tiny):
    model, proc = tiny
    params = SamplingParams(max_new_tokens=5, temperature=1.3, top_k=20, top_p=0.9, repetition_penalty=1.3, seed=7)
    session = ChatSession(model, proc, sampling=params)
    for t in range(5):
        session.add("user", *user_parts(t))
        expected = scratch_ids(model, proc, session.conv, params)
        session.generate()
        assert session.last.token_ids == expected, f"turn {t}"


def test_new_turn_prefills_only_its_own_tokens(tiny):
    model, proc = tiny
    session = ChatSession(model, proc, max_new_tokens=3)
    session.ask(random_image(5), "Describe the picture.")
    first = session.stats["prefill_tokens"]
    assert first > proc.image_tokens  # the first turn carried the image tokens
    prompt = session.last.prompt_tokens
    reply_len = len(proc.tokenizer.encode(session.conv.turns[-1].text))
    session.ask("What colour is it?")
    new_turn = len(proc.tokenizer.encode("<|user|>What colour is it?<|end|><|assistant|>"))
    # at most the previous reply (re-fed only where it does not re-tokenise the same), <|end|>, the new turn
    assert session.stats["prefill_tokens"] - first <= reply_len + 1 + new_turn
    assert session.last.cached_tokens >= prompt
    assert session.last.prompt_tokens == session.last.cached_tokens + session.stats["prefill_tokens"] - first


def test_streaming_pieces_join_to_the_reply(tiny):
    model, proc = tiny
    session = ChatSession(model, proc, max_new_tokens=8)
    stream = session.stream(random_image(2), "Describe the picture.")
    pieces = list(stream)
    assert "".join(pieces) == stream.reply.text == session.conv.turns[-1].text
    assert all(pieces) and stream.reply.finish_reason in ("stop", "length")
    assert stream.reply.prompt_tokens > proc.image_tokens


@pytest.mark.parametrize("policy", [LastK(2), LastK(2, step=3), TokenBudget(90), TokenBudget(60, drop_media_first=False),
                                    Summary(2), Summary(1, step=2)],
                         ids=["last_k", "last_k_step", "token_budget", "token_budget_keep_media", "summary", "summary_step"])
def test_policy_reply_equals_a_fresh_session_on_the_truncated_conversation(tiny, policy):
    model, proc = tiny
    session = ChatSession(model, proc, sampling=GREEDY, policy=policy)
    truncated = reused = 0
    for t in range(8):
        session.add("user", *user_parts(t))
        ctx = session.context()
        truncated += len(ctx.turns) < len(session.conv.turns) or len(ctx.media()) < len(session.conv.media())
        fresh = ChatSession(model, proc, sampling=GREEDY)  # a fresh model session given the truncated conversation
        fresh.load(ctx)
        expected = fresh.generate(commit=False)
        assert expected == scratch_reply(model, proc, ctx, GREEDY), f"turn {t}"
        assert session.generate() == expected, f"turn {t}"
        reused += t > 0 and session.last.cached_tokens >= session.last.prompt_tokens // 2
        assert session.count_tokens(ctx) <= getattr(policy, "budget", 10**9)
    assert truncated >= 3  # the policy did drop something on most turns
    if getattr(policy, "step", 1) > 1:  # between two cuts the cache survives: only the new turn is prefilled
        assert reused >= 5
    assert len(session.conv.turns) == 16  # the session keeps the whole conversation; only the context shrinks


def test_token_budget_drops_old_media_before_text(tiny):
    model, proc = tiny
    session = ChatSession(model, proc, max_new_tokens=2)
    session.ask(random_image(1), "Describe the picture.")
    session.ask(random_image(2), "What colour is it?")
    session.add("user", "How many red things are there?")
    full = session.count_tokens(session.conv)
    session.set_policy(TokenBudget(full - 1))
    ctx = session.context()
    assert len(ctx.turns) == len(session.conv.turns) and len(ctx.media()) == 1  # the oldest image went first
    assert ctx.turns[0].text == "Describe the picture."  # its text stayed
    session.set_policy(TokenBudget(3))
    with pytest.raises(MMDialogError, match=r"last message alone needs \d+ tokens, over the token_budget of 3"):
        session.generate()


def test_undo_retry_fork(tiny):
    model, proc = tiny
    session = ChatSession(model, proc, sampling=GREEDY)
    session.ask(random_image(1), "Describe the picture.")
    first = session.ask("What colour is it?")
    assert session.regenerate().text() == first and len(session.conv.turns) == 4  # greedy: the same reply again
    sampled = SamplingParams(max_new_tokens=6, temperature=2.0, seed=3)
    again = session.regenerate(sampling=sampled).text()
    assert session.conv.turns[-1].text == again and len(session.conv.turns) == 4
    assert session.undo() == 2 and len(session.conv.turns) == 2
    with pytest.raises(MMDialogError, match="not an assistant reply"):
        ChatSession(model, proc).regenerate()

    fork = session.fork()
    a = session.ask("Is there a green triangle?")
    b = fork.ask("What about blue ones?")
    assert len(session.conv.turns) == len(fork.conv.turns) == 4
    assert session.conv.turns[2].text == "Is there a green triangle?" and fork.conv.turns[2].text == "What about blue ones?"
    assert a == scratch_reply(model, proc, session.conv.prefix(3))
    assert b == scratch_reply(model, proc, fork.conv.prefix(3))
    assert fork.stats["images_encoded"] == 1  # the fork shares the parent's media cache and cache prefix
    session.undo()
    session.undo()
    with pytest.raises(MMDialogError, match="nothing to undo"):
        session.undo()


def test_errors_leave_the_session_as_it_was(tiny, monkeypatch):
    model, proc = tiny
    session = ChatSession(model, proc, max_new_tokens=4)
    session.ask(random_image(1), "Describe the picture.")
    before = state(session)

    with pytest.raises(MMDialogError, match="image file not found"):
        session.ask(Image(path="/no/such.png"), "What colour is it?")
    assert state(session) == before
    with pytest.raises(MMDialogError, match="over the model's max_seq_len 512"):
        session.ask("red " * 600)
    assert state(session) == before

    stream = session.stream("What colour is it?")  # the consumer goes away before the end
    next(iter(stream), None)
    stream.close()
    assert state(session) == before
    session.stream("What colour is it?").close()  # never started
    assert state(session) == before

    calls = {"n": 0}
    feed = ChatSession._feed

    def failing(self, ids, images, reader=None):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("device lost")
        return feed(self, ids, images, reader)

    monkeypatch.setattr(ChatSession, "_feed", failing)
    with pytest.raises(RuntimeError):
        session.ask("What colour is it?")  # fails in the middle of decoding
    assert state(session) == before
    monkeypatch.setattr(ChatSession, "_feed", feed)
    assert session.ask("What colour is it?") == scratch_reply(model, proc, session.conv.prefix(3),
                                                              SamplingParams(max_new_tokens=4))


def test_reset_clears_the_conversation_but_keeps_encoded_media(tiny):
    model, proc = tiny
    session = ChatSession(model, proc, max_new_tokens=2)
    session.ask(random_image(1), "Describe the picture.")
    session.reset()
    assert session.cache.seq_len == 0 and session.conv.turns == [] and session.cached_ids == []
    with torch.no_grad():
        session.ask(random_image(1), "What colour is it?")
    assert len(session.conv.turns) == 2 and session.stats["images_encoded"] == 0


def test_max_seq_len_ends_a_reply_with_length(tiny):
    model, proc = tiny
    session = ChatSession(model, proc, max_new_tokens=50)
    prompt = "red " * 480
    session.add("user", prompt)
    n = session.count_tokens(session.conv)
    assert 512 - 50 < n < 512
    session.generate()
    assert session.last.finish_reason == "length" and len(session.last.token_ids) <= 512 - n
