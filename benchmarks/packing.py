"""Training tokens/s with packing vs padding, on the world, same model and the same conversations per step.

Padding puts one conversation per row and pads every row to the batch's longest; packing puts as many whole
conversations in a row as fit --pack-length (attention isolated between them, positions restarted). Both train
on exactly the same batches (the same sampler), so the loss is the same and only the layout differs.
Tokens/s counts real tokens only. --mixed cuts each dialogue after a random round (seeded), for data of mixed
lengths, where padding wastes most.

Usage: python benchmarks/packing.py [--config configs/demo.yaml] [--dialogues 400] [--steps 8] [--batch 16]
                                    [--pack-length 512] [--mixed] [--threads N] [overrides...]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import torch

from mmdialog.config import load_config
from mmdialog.data.collate import Collator
from mmdialog.data.dataset import ConversationDataset
from mmdialog.data.worlds.shapes import generate_world, load_split, record_to_conversation
from mmdialog.model import count_parameters
from mmdialog.objectives.lm import NextTokenObjective
from mmdialog.train.sampler import StepSampler
from mmdialog.train.trainer import autocast_context, make_optimizer, prepare


def measure(model, batches, tc, precision: str = "fp32") -> tuple[float, list[float]]:
    """Seconds of the training steps on batches[1:] (batches[0] warms up), and the losses."""
    obj = NextTokenObjective(model)
    opt = make_optimizer(model, tc)
    losses, t = [], 0.0
    for i, b in enumerate(batches):
        start = time.perf_counter()
        with autocast_context(precision):
            loss, w = obj(b)
        (loss / w).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i > 0:
            t += time.perf_counter() - start
        losses.append(float(loss.detach() / w))
    return t, losses


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--world", help="an existing world directory (default: generate --dialogues into a temp dir)")
    ap.add_argument("--dialogues", type=int, default=400)
    ap.add_argument("--steps", type=int, default=8, help="timed steps (one more warms up)")
    ap.add_argument("--batch", type=int, default=16, help="conversations per step")
    ap.add_argument("--pack-length", type=int, default=0, help="longest packed row (default: max_seq_len)")
    ap.add_argument("--mixed", action="store_true", help="cut each dialogue after a random round")
    ap.add_argument("--repeats", type=int, default=3,
                    help="measure padded and packed alternately this many times; the fastest of each counts "
                         "(the machine is shared: the minimum is the least disturbed)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = load_config(a.config, a.overrides)
    with tempfile.TemporaryDirectory() as tmp:
        world = Path(a.world) if a.world else Path(tmp) / "world"
        if not a.world:
            generate_world(world, dialogues=a.dialogues, seed=cfg.world.seed, image_size=cfg.world.image_size,
                           progress=False)
        tokenizer, model, processor, dataset = prepare(cfg, world, progress=False)
        if a.mixed:
            rng = random.Random(0)
            convs = [record_to_conversation(r, world) for r in load_split(world, "train")]
            convs = [c.prefix(2 * rng.randint(1, len(c.turns) // 2)) for c in convs]
            dataset = ConversationDataset.build(convs, processor, progress=False)
    pack_length = a.pack_length or cfg.model.decoder.max_seq_len
    sampler = StepSampler(len(dataset), a.batch, seed=0)
    steps = [sampler.next()[0] for _ in range(a.steps + 1)]
    padded = [Collator(tokenizer.pad_id)([dataset[i] for i in idx]) for idx in steps]
    packed = [Collator(tokenizer.pad_id, pack=True, pack_length=pack_length)([dataset[i] for i in idx]) for idx in steps]
    real = sum(int(b["attention_mask"].sum()) for b in padded[1:])
    lengths = [len(e.input_ids) for e in dataset.examples]
    print(f"model: {count_parameters(model):,} parameters; {len(dataset)} train conversations, "
          f"{min(lengths)}-{max(lengths)} tokens (mean {sum(lengths) / len(lengths):.0f}); batch {a.batch}; "
          f"rows packed to at most {pack_length} tokens; threads {torch.get_num_threads()}")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    layouts = {"padded": padded, "packed": packed}
    best: dict[str, float] = {}
    losses: dict[str, list[float]] = {}
    for _ in range(a.repeats):
        for name, batches in layouts.items():
            model.load_state_dict(state)
            seconds, losses[name] = measure(model, batches, cfg.train)
            best[name] = min(best.get(name, seconds), seconds)
    for name, batches in layouts.items():
        cells = sum(b["input_ids"].numel() for b in batches[1:])
        shape = tuple(batches[1]["input_ids"].shape)
        print(f"{name}: {real / best[name]:8.0f} tokens/s  {best[name] / a.steps * 1000:6.0f} ms/step  "
              f"rows x length e.g. {shape}, padding {1 - real / cells:5.1%} of the positions")
    same = max(abs(x - y) / abs(x) for x, y in zip(losses["padded"], losses["packed"]))
    print(f"packed / padded: {best['padded'] / best['packed']:.2f}x tokens/s "
          f"(same batches, best of {a.repeats}; largest relative loss difference {same:.1e})")

if __name__ == "__main__":
    main()
