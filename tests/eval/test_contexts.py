"""Each ablation changes the model's input as its name says, and nothing else."""

from mmdialog.chat.policies import LastK, parse_policy
from mmdialog.data.conversation import Image
from mmdialog.eval.contexts import ABLATIONS, Context, LastN, NoMedia, Shuffled, WithPolicy, record_image


def turns(seq):
    """[(role, text, has image)] of a sequence's conversation."""
    return [(t.role, t.text, any(isinstance(p, Image) for p in t.parts)) for t in seq.conv.turns]


def pairs(record):
    return [(rd["question"], rd["answer"]) for rd in record["rounds"]]


def scored(record):
    return [rd["round"] for rd in record["rounds"] if rd["scored"]]


def test_gold_history_is_one_sequence_with_every_scored_round(world32):
    world, records = world32
    rec = records[0]
    (seq,) = Context().sequences(rec, record_image(rec, world))
    t = turns(seq)
    assert [x[1] for x in t] == [s for q, a in pairs(rec) for s in (q, a)]
    assert [x[2] for x in t] == [True] + [False] * (len(t) - 1)  # the image opens the dialogue, once
    assert seq.scored == [(r, r) for r in scored(rec)]


def test_no_media_is_the_gold_history_without_the_image(world32):
    world, records = world32
    rec = records[0]
    image = record_image(rec, world)
    (gold,), (bare,) = Context().sequences(rec, image), NoMedia().sequences(rec, image)
    assert [x[:2] for x in turns(bare)] == [x[:2] for x in turns(gold)]
    assert not any(x[2] for x in turns(bare)) and bare.scored == gold.scored


def test_no_history_and_last_n_keep_the_image_and_the_last_n_rounds(world32):
    world, records = world32
    rec = records[1]
    p = pairs(rec)
    for n in (0, 1, 2, 4):
        seqs = LastN(n).sequences(rec, record_image(rec, world))
        assert [s.scored[0][1] for s in seqs] == [r for r in scored(rec) if r > 0]
        for seq in seqs:
            r = seq.scored[0][1]
            kept = list(range(max(0, r - n), r)) + [r]
            t = turns(seq)
            assert [x[1] for x in t] == [s for k in kept for s in p[k]]
            assert [x[2] for x in t] == [True] + [False] * (len(t) - 1)
            assert seq.scored == [(len(kept) - 1, r)]
    assert ABLATIONS["no_history"]().name == "no_history" and ABLATIONS["last_2"]().name == "last_2"


def test_shuffled_history_keeps_the_rounds_in_another_order(world32):
    world, records = world32
    rec = records[2]
    p = pairs(rec)
    a = Shuffled(0).sequences(rec, record_image(rec, world))
    b = Shuffled(0).sequences(rec, record_image(rec, world))
    c = Shuffled(1).sequences(rec, record_image(rec, world))
    assert [turns(s) for s in a] == [turns(s) for s in b]  # seeded
    assert [turns(s) for s in a] != [turns(s) for s in c]
    for seq in a:
        r = seq.scored[0][1]
        t = turns(seq)
        history = [(t[i][1], t[i + 1][1]) for i in range(0, len(t) - 2, 2)]
        assert sorted(history) == sorted(p[:r]) and t[-2][1] == p[r][0] and t[-1][1] == p[r][1]
        if r > 1:
            assert history != p[:r]  # a real reordering
        assert t[0][2] and not any(x[2] for x in t[1:])  # the image still comes first


def test_policy_context_is_what_the_chat_policy_keeps(world32):
    world, records = world32
    rec = records[0]
    image = record_image(rec, world)
    seqs = WithPolicy(LastK(2), lambda conv: 0).sequences(rec, image)
    p = pairs(rec)
    for seq in seqs:
        r = seq.scored[0][1]
        kept = list(range(max(0, r - 1), r + 1))  # last_k 2: the question's round and the one before
        assert [x[1] for x in turns(seq)] == [s for k in kept for s in p[k]]
        assert any(x[2] for x in turns(seq)) == (0 in kept)  # last_k drops the image with round 0
    summary = WithPolicy(parse_policy("summary:1"), lambda conv: 0).sequences(rec, image)
    assert summary[-1].conv.turns[0].role == "system" and "Earlier in this conversation" in summary[-1].conv.turns[0].text
