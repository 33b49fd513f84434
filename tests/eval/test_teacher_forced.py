"""Teacher-forced exact match decides exactly what greedy generation decides, in one batched pass."""

import copy

import pytest
import torch

from mmdialog.chat.session import ChatSession
from mmdialog.eval.contexts import ABLATIONS, Context, record_image
from mmdialog.eval.lab import gold_generated_rows, teacher_forced_rows
from mmdialog.eval.teacher_forced import TeacherForcedScorer, assistant_spans


def self_consistent(model, proc, records, world, max_new_tokens):
    """Records whose answers are, every other scored round, what the model itself says there (so teacher forcing
    must call them right) and the gold answer elsewhere; built round by round, so each answer's context holds
    the answers before it as changed."""
    out = []
    for rec in records:
        rec = copy.deepcopy(rec)
        session = ChatSession(model, proc, max_new_tokens=max_new_tokens)
        image = record_image(rec, world)
        for rd in rec["rounds"]:
            session.add("user", *([image, rd["question"]] if rd["round"] == 0 else [rd["question"]]))
            if rd["scored"] and rd["round"] % 2 == 0:
                reply = session.generate(commit=False)
                if proc.tokenizer.encode(reply) == session.last.token_ids:  # the text stands for those tokens
                    rd["answer"] = reply
            session.add("assistant", rd["answer"])
        out.append(rec)
    return out


@pytest.mark.parametrize("max_new_tokens", [2, 6])
def test_teacher_forcing_agrees_with_generation(tiny, world32, max_new_tokens):
    model, proc = tiny
    world, records = world32
    torch.manual_seed(0)
    records = self_consistent(model, proc, records, world, max_new_tokens)  # six: some replies round-trip
    images = {r["id"]: record_image(r, world) for r in records}
    scorer = TeacherForcedScorer(model, proc, max_new_tokens=max_new_tokens, max_batch_tokens=300)  # several batches
    tf = teacher_forced_rows(scorer, Context(), records, images)
    gen = gold_generated_rows(model, proc, records, images, max_new_tokens=max_new_tokens)
    assert [(r["id"], r["round"]) for r in tf] == [(r["id"], r["round"]) for r in gen]
    assert [r["correct"] for r in tf] == [r["correct"] for r in gen]
    assert 0 < sum(r["correct"] for r in tf) < len(tf)  # both verdicts occur
    for t, g in zip(tf, gen):
        assert g["pred"].startswith(t["pred"]) or t["correct"]  # the greedy prefix teacher forcing knows
        if t["correct"]:
            assert t["pred"] == g["pred"]


def test_end_token_needed_only_when_there_is_room(tiny, world32):
    model, proc = tiny
    world, records = world32
    rec = copy.deepcopy(records[0])
    seq = Context().sequences(rec, record_image(rec, world))[0]
    ex = proc(seq.conv)
    ids = ex.input_ids.tolist()
    tok = proc.tokenizer
    spans = assistant_spans(ids, tok.role_ids["assistant"], tok.end_id)
    assert len(spans) == len(rec["rounds"])
    for (start, end), rd in zip(spans, rec["rounds"]):
        assert tok.decode(ids[start:end]) == rd["answer"] and ids[end] == tok.end_id
    # a model whose argmax is always the gold next token except <|end|>: right only where the reply fills
    # max_new_tokens (no room left for <|end|>)
    with torch.no_grad():
        logits = model(input_ids=ex.input_ids[None], images=ex.images).logits

    class Oracle(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None, images=None, return_logits=True, **kw):
            out = torch.full((*input_ids.shape, logits.shape[-1]), -10.0)
            nxt = torch.roll(input_ids, -1, dims=1)
            out.scatter_(2, nxt[..., None], 10.0)
            out[input_ids == tok.role_ids["assistant"], tok.end_id] = 9.0  # runner-up: never chosen
            end_next = nxt == tok.end_id
            out[end_next] = -10.0
            out[end_next, logits.shape[-1] - 1] = 10.0  # where <|end|> is due, an ordinary token wins
            return type("O", (), {"logits": out})()

        def parameters(self):
            return model.parameters()

    for n in (1, 2, 3):
        res = TeacherForcedScorer(Oracle(), proc, max_new_tokens=n).score([seq])[0]
        lengths = [end - start for start, end in (spans[t] for t, _ in seq.scored)]
        assert [s.correct for s in res] == [length == n for length in lengths]
        for s, length in zip(res, lengths):
            assert s.first_wrong == (-1 if length == n else min(length, n))


@pytest.mark.parametrize("ablation", ["no_history", "last_1", "last_2", "shuffled_history"])
def test_gold_prefix_rounds_of_an_ablation_are_copied_with_the_same_verdicts(tiny, world32, ablation):
    model, proc = tiny
    world, records = world32
    images = {r["id"]: record_image(r, world) for r in records[:6]}
    scorer = TeacherForcedScorer(model, proc, max_new_tokens=4, max_batch_tokens=300)
    gold = {(r["id"], r["round"]): r for r in teacher_forced_rows(scorer, Context(), records[:6], images)}
    context = ABLATIONS[ablation]()
    prefixes = [s for rec in records[:6] for s in context.sequences(rec, images[rec["id"]]) if s.gold_prefix]
    # round 1 (after the unscored caption) keeps its whole history under last_k and shuffling; no_history
    # keeps none of it (only a scored round 0 would be a prefix)
    assert (not prefixes) == (ablation == "no_history") and all(len(s.scored) == 1 for s in prefixes)
    scored = teacher_forced_rows(scorer, context, records[:6], images)
    reused = teacher_forced_rows(scorer, context, records[:6], images, gold=gold)
    key = lambda r: (r["id"], r["round"], r["correct"], r["pred"], r["mode"])  # noqa: E731
    assert [key(r) for r in reused] == [key(r) for r in scored]
    no_media = [s for rec in records[:6] for s in ABLATIONS["no_media"]().sequences(rec, images[rec["id"]])]
    assert not any(s.gold_prefix for s in no_media)  # without the picture nothing is the gold conversation
