"""Fine-tuning strategies, accumulation, gradient checkpointing, per-turn loss control, on the tiny recipe."""

import pytest
import torch

from mmdialog.data.collate import Collator, last_turn_only, reply_spans
from mmdialog.data.conversation import Conversation
from mmdialog.errors import MMDialogError
from mmdialog.objectives.lm import NextTokenObjective
from mmdialog.modelio import load_checkpoint
from mmdialog.modules.lora import lora_layers
from mmdialog.train.strategies import build_plan, enable_gradient_checkpointing
from tests.conftest import random_image
from tests.train.conftest import run, smoke_config


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed(before, model):
    return {k for k, v in model.state_dict().items() if k in before and not torch.equal(v, before[k])}


def built(cfg, world):
    from mmdialog.train.trainer import prepare

    return prepare(cfg, world, progress=False)


def test_partial_freezes_by_pattern(tiny_world, tmp_path):
    cfg = smoke_config("train.max_steps=2", "train.strategy=partial", "train.freeze=[encoders.*, fusion.*]")
    tokenizer, model, _, dataset = built(cfg, tiny_world)
    before = snapshot(model)
    from mmdialog.train.trainer import train

    train(cfg, model, tokenizer, dataset, tmp_path, progress=False, log=lambda *a: None)
    moved = changed(before, model)
    assert moved and all(k.startswith("decoder.") for k in moved)
    assert any(k.startswith("decoder.blocks.") for k in moved)


def test_patterns_that_match_nothing_are_named(tiny_world):
    cfg = smoke_config("train.strategy=partial", "train.freeze=[encoder.*]")
    _, model, _, _ = built(cfg, tiny_world)
    with pytest.raises(MMDialogError, match=r"train.freeze: pattern 'encoder.\*' matches no parameter.*encoders.\*"):
        build_plan(model, cfg.train)
    with pytest.raises(MMDialogError, match="applies to strategy=staged"):
        build_plan(model, smoke_config("train.stages=[{trainable: ['*'], steps: 1}]").train)


def test_staged_unfreezes_stage_by_stage(tiny_world, tmp_path):
    stages = "train.stages=[{trainable: ['fusion.*'], steps: 2, lr: 0.01}, {trainable: ['*'], steps: 2}]"
    cfg = smoke_config("train.strategy=staged", stages, "train.save_every=2")
    tokenizer, model, _, dataset = built(cfg, tiny_world)
    before = snapshot(model)
    model2, _, _, res = run(cfg, tiny_world, tmp_path)
    assert res.steps == 4  # the stages' steps, not train.max_steps
    after_stage_1 = load_checkpoint(tmp_path / "checkpoints" / "step-00000002").model
    moved_1 = changed(before, after_stage_1)
    assert moved_1 and all(k.startswith("fusion.") for k in moved_1)
    moved_2 = changed(before, model2)
    assert any(k.startswith("decoder.") for k in moved_2) and any(k.startswith("encoders.") for k in moved_2)


def test_staged_resume_lands_in_the_right_stage(tiny_world, tmp_path):
    import shutil

    stages = "train.stages=[{trainable: ['fusion.*'], steps: 2}, {trainable: ['decoder.*'], steps: 3}]"
    cfg = smoke_config("train.strategy=staged", stages, "train.save_every=3")
    a, _, _, _ = run(cfg, tiny_world, tmp_path / "a")
    shutil.copytree(tmp_path / "a" / "checkpoints" / "step-00000003", tmp_path / "b" / "checkpoints" / "step-00000003")
    b, _, _, res = run(cfg, tiny_world, tmp_path / "b", resume=True)
    assert res.resumed_from == 3
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def logits_of(model, processor):
    conv = Conversation().add("user", random_image(1), "How many red things are there?").add("assistant", "2")
    ex = processor(conv)
    with torch.no_grad():
        return model(input_ids=ex.input_ids[None], images=ex.images, return_logits=True).logits


def test_lora_trains_adapters_only_and_merges_for_deployment(tiny_world, tmp_path):
    from mmdialog.train.trainer import train

    cfg = smoke_config("train.max_steps=3", "train.strategy=lora", "train.lora.r=4", "train.save_every=2",
                       "train.lr=0.05", "train.lora.also_train=[fusion.*]")
    tokenizer, model, processor, dataset = built(cfg, tiny_world)
    before = snapshot(model)
    plan = build_plan(model, cfg.train)  # what train() will do: inject adapters
    assert len(lora_layers(model)) == 2 * 2  # qkv and out_proj of 2 blocks
    assert plan.all_trainable == {n for n, _ in model.named_parameters() if ".lora_" in n or n.startswith("fusion.")}
    # fresh adapters (B = 0) leave the model's output unchanged
    torch.manual_seed(0)
    _, base, processor, _ = built(cfg, tiny_world)
    assert torch.equal(logits_of(model, processor), logits_of(base, processor))

    tokenizer, model, processor, dataset = built(cfg, tiny_world)
    train(cfg, model, tokenizer, dataset, tmp_path, progress=False, log=lambda *a: None)
    assert not lora_layers(model)  # merged in place at the end
    final = load_checkpoint(tmp_path / "checkpoint")  # a plain checkpoint: chat, eval, export load it
    assert set(final.model.state_dict()) == set(before)
    assert final.meta["adapters"] is None and final.meta["strategy"] == "lora"
    merged = final.model.state_dict()
    moved = {k for k in before if not torch.equal(before[k], merged[k])}
    assert any(".attn.qkv." in k for k in moved) and any(k.startswith("fusion.") for k in moved)
    assert not any(".mlp." in k or k.startswith("encoders.") for k in moved)  # not targeted, not trained
    assert torch.allclose(logits_of(final.model, final.processor), logits_of(model, processor), atol=1e-5)
    # a checkpoint written mid-run still carries the adapters; loading merges them
    mid = load_checkpoint(tmp_path / "checkpoints" / "step-00000002")
    assert not lora_layers(mid.model) and set(mid.model.state_dict()) == set(before)


def test_lora_checkpoint_chats(tiny_world, tmp_path):
    from mmdialog.chat.session import ChatSession
    from mmdialog.modelio import load_any

    run(smoke_config("train.max_steps=2", "train.strategy=lora"), tiny_world, tmp_path)
    ck = load_any(tmp_path / "checkpoint")
    reply = ChatSession(ck.model, ck.processor, max_new_tokens=3).ask(random_image(2), "How many red things are there?")
    assert isinstance(reply, str)


def test_accumulation_gives_the_big_batch_gradient(tiny_world, tmp_path):
    # AdamW: Muon's update is blind to the gradient's scale (a wrong normalisation would not show) and
    # orthogonalises in bf16 (fp32-rounding differences of the gradients grow to ~1e-4 in the weights).
    # AdamW's m / sqrt(v) still magnifies the rounding of near-zero gradients: 3.8e-6 at most after 3 steps on
    # an AVX-512 Xeon (1e-6 passed on an AMX one); one AdamW step moves a weight by up to lr = 3e-3
    opt, atol = "train.optimizer=adamw", 1e-5
    a, _, _, ra = run(smoke_config("train.max_steps=3", opt), tiny_world, tmp_path / "a")
    b, _, _, rb = run(smoke_config("train.max_steps=3", "train.grad_accum=2", opt), tiny_world, tmp_path / "b")
    assert [l for _, l in ra.losses] == pytest.approx([l for _, l in rb.losses], rel=1e-5)
    for k, v in a.state_dict().items():
        assert torch.allclose(v, b.state_dict()[k], atol=atol), k


def test_packed_training_follows_padded_training(tiny_world, tmp_path):
    """Packing changes the layout, not the batch: the same conversations per step, the same losses."""
    a, _, _, ra = run(smoke_config("train.max_steps=3"), tiny_world, tmp_path / "a")
    b, _, _, rb = run(smoke_config("train.max_steps=3", "train.pack=true", "train.pack_length=400"), tiny_world,
                      tmp_path / "b")
    assert [l for _, l in ra.losses] == pytest.approx([l for _, l in rb.losses], rel=1e-4)
    assert rb.tokens == ra.tokens  # real tokens (padding is not counted)


def test_gradient_checkpointing_keeps_loss_and_gradients(tiny_world):
    cfg = smoke_config()
    tokenizer, model, _, dataset = built(cfg, tiny_world)
    batch = Collator(tokenizer.pad_id)([dataset[i] for i in range(4)])

    def grads(m):
        m.zero_grad()
        loss, w = NextTokenObjective(m)(batch)
        (loss / w).backward()
        return loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters()}

    loss_a, ga = grads(model)
    assert enable_gradient_checkpointing(model) == 2
    loss_b, gb = grads(model)
    assert torch.equal(loss_a, loss_b)
    assert all(torch.allclose(ga[n], gb[n], atol=1e-7) for n in ga)


def test_fp16_path_builds_a_gradient_scaler_on_cuda_only():
    from mmdialog.train.trainer import resolve_precision

    assert resolve_precision("fp16", "cuda") == "fp16"
    scaler = torch.amp.GradScaler("cuda", enabled=torch.cuda.is_available())
    assert scaler.is_enabled() == torch.cuda.is_available()
    with pytest.raises(MMDialogError, match="fp16 needs CUDA"):
        resolve_precision("fp16", "cpu")


# ----------------------------------------------------------------------------- loss per turn

def three_round(processor, weights=(1, 1, 1)):
    conv = Conversation().add("user", random_image(0), "Describe the picture.").add("assistant", "There are 5 shapes.")
    conv.add("user", "How many red things are there?").add("assistant", "2")
    conv.add("user", "What colour is it?").add("assistant", "no")
    for t, w in zip([t for t in conv.turns if t.role == "assistant"], weights):
        t.weight = w
    return processor(conv)


def test_last_turn_only_keeps_the_last_reply(tiny):
    _, processor = tiny
    ex = three_round(processor)
    spans = reply_spans(ex.labels)
    assert len(spans) == 3
    last = last_turn_only(ex.labels)
    assert reply_spans(last) == spans[-1:]
    batch = Collator(0, loss_turns="last")([ex])
    assert torch.equal(batch["labels"][0], last)


def test_per_message_weights_scale_each_reply(tiny):
    model, processor = tiny
    ex = three_round(processor, weights=(1, 0, 2.5))
    spans = reply_spans(ex.labels)
    assert [float(ex.weights[s]) for s, _ in spans] == [1.0, 0.0, 2.5]
    obj = NextTokenObjective(model)
    batch = Collator(0, loss_turns="weighted")([ex])
    with torch.no_grad():
        loss, weight = obj(batch)
    # the same as the three replies' token losses weighted by hand
    parts = []
    for keep in range(3):
        labels = torch.full_like(ex.labels, -100)
        s, e = spans[keep]
        labels[s:e] = ex.labels[s:e]
        b = Collator(0)([type(ex)(ex.input_ids, labels, ex.images)])
        with torch.no_grad():
            parts.append(obj(b))
    assert float(weight) == pytest.approx(float(parts[0][1] + 2.5 * parts[2][1]))
    assert float(loss) == pytest.approx(float(parts[0][0] + 2.5 * parts[2][0]), rel=1e-5)
    # loss_turns=all ignores the weights
    assert "loss_weights" not in Collator(0)([ex])


def test_per_turn_loss_weighs_every_reply_the_same(tiny):
    model, processor = tiny
    ex = three_round(processor)
    spans = reply_spans(ex.labels)
    assert len({e - s for s, e in spans}) > 1, "replies of different lengths"
    batch = Collator(0, loss_turns="per_turn")([ex, ex])
    w = batch["loss_weights"]
    for s, e in spans:  # each reply's tokens share a weight of 1
        assert float(w[1, s:e].sum()) == pytest.approx(1.0)
    with torch.no_grad():
        loss, weight = NextTokenObjective(model)(batch)
    assert float(weight) == pytest.approx(2 * len(spans))  # the trainer divides by the number of replies
    # the loss is the sum over replies of each reply's mean token loss
    means = []
    for s, e in spans:
        labels = torch.full_like(ex.labels, -100)
        labels[s:e] = ex.labels[s:e]
        with torch.no_grad():
            l, n = NextTokenObjective(model)(Collator(0)([type(ex)(ex.input_ids, labels, ex.images)]))
        means.append(float(l / n))
    assert float(loss) == pytest.approx(2 * sum(means), rel=1e-4)


def test_weights_come_from_openai_and_sharegpt_records(tmp_path):
    from mmdialog.data.formats import openai, sharegpt
    from mmdialog.data.formats.common import MediaRoot, RecordError

    rec = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a", "weight": 0},
                        {"role": "user", "content": "again"}, {"role": "assistant", "content": "b"}]}
    conv = openai.from_record(rec, MediaRoot(tmp_path))
    assert [t.weight for t in conv.turns] == [1, 0, 1, 1]
    assert openai.to_record(conv, MediaRoot(tmp_path))["messages"][1]["weight"] == 0
    sg = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "a", "weight": 0.5}]}
    assert [t.weight for t in sharegpt.from_record(sg, MediaRoot(tmp_path)).turns] == [1, 0.5]
    rec["messages"][1]["weight"] = -1
    with pytest.raises(RecordError, match=r"'messages'\[1\].weight should be a number >= 0"):
        openai.from_record(rec, MediaRoot(tmp_path))


def test_fine_tuning_starts_from_a_checkpoint(tiny_world, tmp_path):
    from mmdialog.train.trainer import prepare

    base, tok, _, _ = run(smoke_config("train.max_steps=2"), tiny_world, tmp_path / "base")
    cfg = smoke_config("train.max_steps=2", "train.strategy=lora", f"train.init_from={tmp_path / 'base' / 'checkpoint'}")
    tokenizer, model, _, _ = prepare(cfg, tiny_world, progress=False)
    assert tokenizer.tok.to_str() == tok.tok.to_str()
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in model.state_dict().items())
    with pytest.raises(MMDialogError, match=r"another model section \(model.decoder differ\)"):
        prepare(smoke_config(f"train.init_from={tmp_path / 'base' / 'checkpoint'}", "model.decoder.depth=1"),
                tiny_world, progress=False)
