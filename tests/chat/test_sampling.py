import pytest
import torch

from mmdialog.chat.sampling import Sampler, SamplingParams, TextStream
from mmdialog.errors import MMDialogError


def logits(*values):
    return torch.tensor(values, dtype=torch.float)


def test_greedy_is_argmax_and_never_a_banned_token():
    assert Sampler(SamplingParams())(logits(0.1, 3.0, 2.0), []) == 1
    assert Sampler(SamplingParams(), banned=[1])(logits(0.1, 3.0, 2.0), []) == 2


def test_top_k_one_and_tiny_top_p_are_greedy_at_any_temperature():
    x = torch.randn(300, generator=torch.Generator().manual_seed(0))
    for seed in range(5):
        assert Sampler(SamplingParams(temperature=5.0, top_k=1, seed=seed))(x, []) == int(x.argmax())
        assert Sampler(SamplingParams(temperature=5.0, top_p=1e-6, seed=seed))(x, []) == int(x.argmax())


def test_top_p_keeps_the_smallest_head_reaching_p():
    x = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    seen = {Sampler(SamplingParams(temperature=1.0, top_p=0.75, seed=s))(x, []) for s in range(200)}
    assert seen == {0, 1}
    seen = {Sampler(SamplingParams(temperature=1.0, top_k=3, seed=s))(x, []) for s in range(300)}
    assert seen == {0, 1, 2}


def test_seed_makes_sampling_reproducible():
    x = torch.zeros(50)
    draw = lambda seed: [Sampler(SamplingParams(temperature=1.0, seed=seed))(x, []) for _ in range(1)]  # noqa: E731
    s1 = Sampler(SamplingParams(temperature=1.0, seed=1))
    s2 = Sampler(SamplingParams(temperature=1.0, seed=1))
    assert [s1(x, []) for _ in range(20)] == [s2(x, []) for _ in range(20)]
    assert len({tuple(draw(s)) for s in range(20)}) > 1


def test_repetition_penalty_lowers_tokens_already_in_the_reply():
    x = logits(2.0, 1.9, -1.0)
    assert Sampler(SamplingParams())(x, [0]) == 0
    assert Sampler(SamplingParams(repetition_penalty=1.2))(x, [0]) == 1  # 2.0 / 1.2 < 1.9
    assert Sampler(SamplingParams(repetition_penalty=1.2))(logits(-1.0, -1.1), [0]) == 1  # -1.2 < -1.1


@pytest.mark.parametrize("kwargs,needle", [
    ({"max_new_tokens": 0}, "max_new_tokens"), ({"temperature": -1}, "temperature"), ({"top_p": 0}, "top_p"),
    ({"top_k": -2}, "top_k"), ({"repetition_penalty": 0}, "repetition_penalty"), ({"stop": [""]}, "stop"),
    ({"seed": "x"}, "seed"), ({"temperature": float("nan")}, "temperature"),
])
def test_bad_parameters_are_named(kwargs, needle):
    with pytest.raises(MMDialogError, match=needle):
        SamplingParams(**kwargs)


def test_stream_never_splits_a_multibyte_character(tokenizer):
    text = "Das Café ist grün 🙂 — naïve 漢字 red"
    ids = tokenizer.encode(text)
    assert len(ids) > len(text.split())  # several characters are split into byte tokens
    stream = TextStream(tokenizer.decode)
    pieces = [stream.push(ids[: i + 1]) for i in range(len(ids))] + [stream.flush()]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == text == stream.text


def test_stream_cuts_at_a_stop_string_and_holds_back_its_prefix(tokenizer):
    ids = tokenizer.encode("There are 5 shapes. One is red.")
    stream = TextStream(tokenizer.decode, stop=["shapes.", "zzz"])
    out = ""
    for i in range(len(ids)):
        out += stream.push(ids[: i + 1])
        assert "shap" not in out  # a stop string's start is never shown while it may still complete
        if stream.stopped:
            break
    out += stream.flush()
    assert stream.stopped and out == stream.text == "There are 5 "
    # a held-back prefix that never completes is given out at the end
    stream = TextStream(tokenizer.decode, stop=["red things"])
    ids = tokenizer.encode("One is red")
    out = "".join(stream.push(ids[: i + 1]) for i in range(len(ids)))
    assert out == "One is " and out + stream.flush() == "One is red" and not stream.stopped


def test_rows_choose_what_the_sampler_chooses_row_by_row():
    x = torch.randn(5, 40, generator=torch.Generator().manual_seed(0))
    replies = [[], [3], [], [7, 7], [1]]
    for params in (SamplingParams(), SamplingParams(repetition_penalty=1.5)):
        s = Sampler(params, banned=[0, 2, 39], end_id=4)
        x[0, 4] = x[3, 4] = 100.0  # <|end|> is the argmax: never a reply's first token
        assert s.rows(x, replies) == [s(row, r) for row, r in zip(x, replies)]
    assert Sampler(SamplingParams(), end_id=4).rows(x, replies)[3] == 4
    sampled = [Sampler(SamplingParams(temperature=1.0, seed=3)).rows(x, replies) for _ in range(2)]
    assert sampled[0] == sampled[1]
