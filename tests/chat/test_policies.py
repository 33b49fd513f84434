import pytest

from mmdialog.chat.policies import Full, LastK, Summary, TokenBudget, first_kept, make_policy, parse_policy, split_rounds
from mmdialog.data.conversation import Conversation, Image
from mmdialog.errors import MMDialogError
from tests.conftest import random_image


def conversation(rounds=5, system=True):
    conv = Conversation()
    if system:
        conv.add("system", "Answer briefly.")
    for r in range(rounds):
        conv.add("user", *([random_image(r)] if r % 2 == 0 else []), f"question {r}")
        if r < rounds - 1:
            conv.add("assistant", f"answer {r}")
    return conv


def count(conv):  # a stand-in token counter: words, plus 4 per image
    return sum(len(t.text.split()) + 2 + 4 * len(t.media()) for t in conv.turns) + 1


def test_rounds_keep_system_turns_apart():
    head, rounds = split_rounds(conversation(3))
    assert [t.role for t in head] == ["system"] and [len(r) for r in rounds] == [2, 2, 1]


def test_last_k_keeps_the_system_prompt_and_whole_rounds():
    conv = conversation(5)
    ctx = LastK(2).apply(conv)
    assert [t.text for t in ctx.turns] == ["Answer briefly.", "question 3", "answer 3", "question 4"]
    assert LastK(9).apply(conv) is conv and Full().apply(conv) is conv


def test_a_step_moves_the_cut_several_rounds_at_a_time():
    assert [first_kept(n, 2, 1) for n in range(1, 8)] == [0, 0, 1, 2, 3, 4, 5]
    assert [first_kept(n, 2, 3) for n in range(1, 10)] == [0, 0, 0, 0, 3, 3, 3, 6, 6]  # keeps 2..4 rounds
    kept = [len(split_rounds(LastK(2, step=3).apply(conversation(n)))[1]) for n in range(1, 10)]
    assert kept == [1, 2, 3, 4, 2, 3, 4, 2, 3]
    summary = Summary(2, step=3).apply(conversation(7))
    assert len(split_rounds(summary)[1]) == 4 and summary.turns[1].text.startswith("Earlier")


def test_token_budget_drops_media_then_rounds_and_never_the_last_round():
    conv = conversation(5)
    full = count(conv)
    ctx = TokenBudget(full - 4).apply(conv, count)
    assert len(ctx.turns) == len(conv.turns) and len(ctx.media()) == len(conv.media()) - 1
    assert ctx.turns[1].text == "question 0" and not ctx.turns[1].media()  # image gone, its text kept
    assert ctx.turns[-1].media()  # the image of the round being answered stays
    ctx = TokenBudget(full - 20).apply(conv, count)
    assert count(ctx) <= full - 20 and ctx.turns[0].role == "system" and ctx.turns[1].role == "user"
    keep_media = TokenBudget(full - 4, drop_media_first=False).apply(conv, count)
    assert keep_media.turns[1].text == "question 1"  # a whole round went instead
    for t in ctx.turns:  # no placeholder without its media: images are removed as parts
        assert all(isinstance(p, Image) for p in t.media())
    with pytest.raises(MMDialogError, match="over the token_budget of 3"):
        TokenBudget(3).apply(conv, count)


def test_summary_replaces_old_rounds_with_one_system_turn():
    conv = conversation(6)
    ctx = Summary(keep=2, words=1).apply(conv)
    assert [t.role for t in ctx.turns] == ["system", "system", "user", "assistant", "user"]
    summary = ctx.turns[1].text
    assert summary.startswith("Earlier in this conversation:") and "user: [image] question ..." in summary
    assert "assistant: answer ..." in summary and "question 4" not in summary
    assert Summary(keep=2, summarize=lambda turns: f"{len(turns)} turns").apply(conv).turns[1].text.endswith("8 turns")


def test_policies_by_name():
    assert isinstance(parse_policy("full"), Full)
    assert parse_policy("last_k:3").k == 3 and parse_policy("last_k 3").k == 3 and parse_policy("last_k:3:2").step == 2
    assert parse_policy("summary:2:4").describe() == "summary 2 4"
    with pytest.raises(MMDialogError, match="at most 1 number"):
        parse_policy("token_budget:100:2")
    assert make_policy("token_budget", "200").budget == 200 and make_policy("summary", 2).keep == 2
    with pytest.raises(MMDialogError, match="unknown context policy 'lastk'; known: full, last_k, summary, token_budget"):
        parse_policy("lastk")
    with pytest.raises(MMDialogError, match="whole number"):
        parse_policy("last_k:x")
    with pytest.raises(MMDialogError, match="k >= 1"):
        parse_policy("last_k:0")
