"""The fusions side by side on the same tiny world: parameters, media tokens per image, training ms/step and
tokens/s on the same batches, and cached decoding ms/token in a chat session (turn 2, after an image).

Usage: python benchmarks/fusion_compare.py [--config configs/tiny/smoke.yaml] [--dialogues 60] [--steps 10]
                                           [--fusions concat,cross_attention,...] [overrides...]
Prints a table; no accuracy (a few steps teach nothing; `mmdialog demo` with a fusion override measures that).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from mmdialog.chat.sampling import SamplingParams
from mmdialog.chat.session import ChatSession
from mmdialog.config import load_config
from mmdialog.data.collate import Collator
from mmdialog.data.conversation import Image
from mmdialog.data.worlds.shapes import generate_world, load_split
from mmdialog.model import count_parameters
from mmdialog.train.trainer import prepare

FUSIONS = {
    "concat": [],
    "cross_attention": ["model.fusion.heads=2", "model.fusion.every=1"],
    "interactive": ["model.fusion.heads=2", "model.fusion.layers=1"],
    "hierarchical": ["model.fusion.levels=[0,-1]"],
    "dynamic": ["model.fusion.levels=[0,-1]"],
    "resampler": ["model.fusion.heads=2", "model.fusion.num_queries=4"],
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/tiny/smoke.yaml")
    ap.add_argument("--dialogues", type=int, default=60)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--fusions", default=",".join(FUSIONS))
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="applied to every fusion's config")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    base = load_config(a.config, a.overrides)
    with tempfile.TemporaryDirectory() as tmp:
        world = Path(tmp) / "world"
        generate_world(world, dialogues=a.dialogues, seed=base.world.seed, image_size=base.world.image_size,
                       progress=False)
        test_record = load_split(world, "test")[0]
        print(f"world: {a.dialogues} dialogues; batch {a.batch}; {a.steps} timed steps; threads {torch.get_num_threads()}")
        print(f"{'fusion':16} {'params':>9} {'tok/img':>7} {'seq len':>7} {'ms/step':>8} {'tok/s':>7} {'loss0->N':>13} "
              f"{'ms/token':>8}")
        for name in a.fusions.split(","):
            cfg = load_config(a.config, a.overrides + [f"model.fusion.name={name}", *FUSIONS[name]])
            tok, model, proc, data = prepare(cfg, world, progress=False)
            batches = [Collator(tok.pad_id)([data[(i * a.batch + j) % len(data)] for j in range(a.batch)])
                       for i in range(a.steps + 1)]
            opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
            model.train()
            losses, tokens = [], 0
            for i, batch in enumerate(batches):
                if i == 1:  # the first step warms up allocators and kernels
                    t0 = time.perf_counter()
                loss = model(**batch).loss
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
                tokens += int(batch["attention_mask"].sum()) if i else 0
            ms = (time.perf_counter() - t0) / a.steps * 1000
            seq = sum(b["input_ids"].shape[1] for b in batches) / len(batches)

            model.eval()
            session = ChatSession(model, proc, sampling=SamplingParams(max_new_tokens=8))
            session.ask(Image(path=str(world / test_record["image"])), test_record["rounds"][0]["question"])
            before = session.stats["decode_tokens"]
            t1 = time.perf_counter()
            session.ask(test_record["rounds"][1]["question"])
            decoded = max(1, session.stats["decode_tokens"] - before + 1)
            ms_tok = (time.perf_counter() - t1) / decoded * 1000
            print(f"{name:16} {count_parameters(model):9,} {model.num_media_tokens('image'):7} {seq:7.0f} {ms:8.1f} "
                  f"{tokens / (ms * a.steps) * 1000:7.0f} {losses[0]:6.2f}->{losses[-1]:5.2f} {ms_tok:8.2f}")


if __name__ == "__main__":
    main()
