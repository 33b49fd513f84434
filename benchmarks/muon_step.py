"""Muon's optimizer step on the demo model's hidden matrices: torch.optim.Muon (Newton-Schulz in bf16) vs
mmdialog's Muon with the iteration in fp32 (what the trainer uses on a CPU), same gradients.

Usage: python benchmarks/muon_step.py [--config configs/demo.yaml] [--steps 20] [--threads N] [overrides...]
Prints ms per step of each and the ratio; the fastest of --repeats rounds counts (a shared machine's noise).
"""

from __future__ import annotations

import argparse
import time

import torch

from mmdialog.config import load_config
from mmdialog.model import build_model
from mmdialog.train.muon import Muon
from mmdialog.train.trainer import muon_matrices


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = load_config(a.config, a.overrides)
    model = build_model(cfg.model, vocab_size=512, placeholder_ids={"image": 6})
    ids = muon_matrices(model)
    params = [p for p in model.parameters() if id(p) in ids]
    grads = [torch.randn_like(p) for p in params]
    print(f"{len(params)} matrices, {sum(p.numel() for p in params):,} parameters; threads {torch.get_num_threads()}")
    makers = {"torch.optim.Muon (bf16)": lambda: torch.optim.Muon(params, lr=1e-3, adjust_lr_fn="match_rms_adamw"),
              "mmdialog Muon (fp32)": lambda: Muon(params, lr=1e-3, adjust_lr_fn="match_rms_adamw",
                                                    ns_dtype=torch.float32)}
    best = {name: float("inf") for name in makers}
    for _ in range(a.repeats):
        for name, make in makers.items():
            opt = make()
            for p, g in zip(params, grads):
                p.grad = g
            opt.step()  # warm up
            start = time.perf_counter()
            for _ in range(a.steps):
                opt.step()
            best[name] = min(best[name], (time.perf_counter() - start) / a.steps * 1000)
    for name, ms in best.items():
        print(f"{name}: {ms:.1f} ms/step")
    ref, ours = best.values()
    print(f"fp32 / bf16 speed: {ref / ours:.2f}x")


if __name__ == "__main__":
    main()
