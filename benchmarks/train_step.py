"""Training-step throughput of the demo model on this machine: fp32 vs bf16 autocast, same batch.

Usage: python benchmarks/train_step.py [--batch 32] [--seq 200] [--steps 5] [overrides...]
Prints ms/step and tokens/s for each precision and the bf16/fp32 speed ratio.
"""

import argparse
import time
from contextlib import nullcontext

import torch

from mmdialog.config import load_config
from mmdialog.model import build_model, count_parameters


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=200)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    cfg = load_config(a.config, a.overrides)
    model = build_model(cfg.model, vocab_size=512, placeholder_ids={"image": 6})
    n_img = model.num_media_tokens("image")
    print(f"parameters {count_parameters(model):,}; batch {a.batch} x {a.seq} tokens ({n_img} image tokens each); "
          f"threads {torch.get_num_threads()}")
    ids = torch.randint(20, 512, (a.batch, a.seq))
    ids[:, 2:2 + n_img] = 6
    labels = ids.clone()
    labels[:, : a.seq // 2] = -100
    s = cfg.model.image.image_size
    batch = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids),
             "images": torch.randn(a.batch, 3, s, s)}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    results = {}
    for name, ctx in [("fp32", nullcontext), ("bf16", lambda: torch.autocast("cpu", dtype=torch.bfloat16))]:
        for i in range(a.steps + 1):
            if i == 1:
                t = time.perf_counter()
            with ctx():
                loss = model(**batch).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        ms = (time.perf_counter() - t) / a.steps * 1000
        results[name] = ms
        print(f"{name}: {ms:.0f} ms/step, {a.batch * a.seq / ms * 1000:.0f} tokens/s")
    print(f"bf16 speed-up over fp32: {results['fp32'] / results['bf16']:.2f}x")


if __name__ == "__main__":
    main()
