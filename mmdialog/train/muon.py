"""torch.optim.Muon with its Newton-Schulz iteration in a dtype of our choice.

torch runs the iteration in bf16, which is right on a GPU. On a CPU the bf16 matmuls of 128-wide matrices
are slower than fp32 ones (2-core Xeon: 143 vs 240 GFLOP/s, and Muon's step ~2x slower over the demo
model's 30 matrices; `python benchmarks/muon_step.py`), so the trainer runs it in fp32
there. Same algorithm, state and hyper-parameters as torch.optim.Muon (its state dict loads either way).
"""

from __future__ import annotations

import math

import torch


def orthogonalise(g: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float,
                  dtype: torch.dtype) -> torch.Tensor:
    """The quintic Newton-Schulz iteration of torch.optim.Muon (Keller Jordan's), in `dtype`: G -> about U V^T."""
    a, b, c = coefficients
    x = g.to(dtype)
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)  # spectral norm at most 1
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


def adjusted_lr(lr: float, how: str | None, shape: torch.Size) -> float:
    """torch.optim.Muon's lr per matrix shape ("match_rms_adamw": the update's RMS that of AdamW's)."""
    rows, cols = shape[:2]
    if how is None or how == "original":
        return lr * math.sqrt(max(1.0, rows / cols))
    if how == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(rows, cols))
    return lr


class Muon(torch.optim.Muon):
    """torch.optim.Muon; ns_dtype=torch.bfloat16 is torch's own step, any other dtype runs the same step
    with the iteration in that dtype."""

    def __init__(self, params, *, ns_dtype: torch.dtype = torch.bfloat16, **kwargs):
        super().__init__(params, **kwargs)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None):
        if self.ns_dtype == torch.bfloat16:
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            momentum = group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - momentum)
                update = p.grad.lerp(buf, momentum) if group["nesterov"] else buf
                update = orthogonalise(update, group["ns_coefficients"], group["ns_steps"], group["eps"],
                                       self.ns_dtype)
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update.to(p.dtype), alpha=-adjusted_lr(group["lr"], group["adjust_lr_fn"], p.shape))
        return loss
