"""LoRA adapters (peft) on a built model: inject, read out, save and load, merge into the weights.

train/strategies.py puts them on for strategy lora (and a staged stage that trains them); model I/O
(modelio/) merges those of a checkpoint written mid-run on load, and `mmdialog export` writes them in
peft's format.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

import torch
import torch.nn as nn

from mmdialog.config import LoraConfig
from mmdialog.errors import MMDialogError


def matching(names, patterns, where: str) -> set[str]:
    """Names matching any fnmatch pattern; a pattern that matches nothing is an error naming it."""
    names = list(names)
    out = set()
    for p in patterns:
        hit = {n for n in names if fnmatch.fnmatchcase(n, p)}
        if not hit:
            tops = sorted({n.split(".")[0] + ".*" for n in names})
            raise MMDialogError(f"{where}: pattern {p!r} matches no parameter; names look like {names[0]!r} "
                                f"(top level: {', '.join(tops)})")
        out |= hit
    return out


def inject_lora(model: nn.Module, cfg: LoraConfig) -> list[str]:
    """Wrap the Linear layers whose module names match cfg.targets with peft LoRA layers, in place.
    Returns their names. The adapters start as a no-op (B = 0): the model's output is unchanged."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import inject_adapter_in_model

    linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    targets = sorted(matching(linear, cfg.targets, "train.lora.targets"))
    peft_cfg = PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                              bias="none")
    inject_adapter_in_model(peft_cfg, model)
    return targets


def lora_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    from peft.tuners.lora import LoraLayer

    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]


ADAPTERS = "adapters.safetensors"  # a checkpoint's unmerged LoRA adapters, beside its merged weights


def lora_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters as {f"{module}.lora_A.weight": (r, in), f"{module}.lora_B.weight": (out, r)}, module names
    as named_modules gives them (each module once, under its first name), detached copies on the CPU."""
    state = {}
    for name, layer in lora_layers(model):
        for kind in ("lora_A", "lora_B"):
            state[f"{name}.{kind}.weight"] = getattr(layer, kind)["default"].weight.detach().cpu().clone()
    return state


def save_adapters(path: str | Path, state: dict[str, torch.Tensor], cfg: LoraConfig) -> None:
    """Write lora_state() with r, alpha and dropout in the safetensors metadata."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(path),
              metadata={"format": "mmdialog-lora/1", "r": str(cfg.r), "alpha": str(cfg.alpha), "dropout": str(cfg.dropout)})


def load_adapters(path: str | Path) -> tuple[dict[str, torch.Tensor], LoraConfig]:
    """What save_adapters wrote: the tensors, and a LoraConfig with r, alpha, dropout and the adapted modules."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
        cfg = LoraConfig(r=int(meta["r"]), alpha=float(meta["alpha"]), dropout=float(meta["dropout"]),
                         targets=tuple(sorted({k.rsplit(".", 2)[0] for k in state})))
    except Exception as e:
        raise MMDialogError(f"cannot read the LoRA adapters {path}: {e}") from None
    return state, cfg


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight (W + scale * B @ A) and put the plain Linear back, in place:
    the model then has exactly the parameter names and shapes of one built without adapters."""
    for name, layer in lora_layers(model):
        layer.merge()
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, layer.get_base_layer())
    return model
