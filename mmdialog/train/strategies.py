"""Fine-tuning strategies: which parameters train, and when. They transform a built model; none subclasses it.

    full     every parameter trains for train.max_steps
    partial  parameters matching train.freeze (fnmatch patterns over names, e.g. "encoders.*") stay frozen
    staged   train.stages run in order, each training the parameters matching its `trainable` patterns
             for its `steps` at its `lr` (e.g. the connector, then connector + decoder, then everything);
             the run lasts the stages' steps added up. A stage whose patterns name LoRA parameters
             ("*.lora_*") gets adapters on train.lora.targets, as strategy lora does (the connector, then
             connector + adapters); they start as a no-op, and are merged and kept as lora does at the end
    lora     low-rank adapters (peft) on the Linear layers matching train.lora.targets; the rest is frozen
             except train.lora.also_train. merge_lora folds the adapters into the weights for deployment;
             the final checkpoint keeps the adapters too (adapters.safetensors, see save_adapters), which
             `mmdialog export` writes in peft's format.

Gradient checkpointing (enable_gradient_checkpointing) recomputes each decoder block in the backward pass.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from mmdialog.config import LoraConfig, TrainConfig
from mmdialog.errors import MMDialogError

STRATEGIES = ("full", "partial", "staged", "lora")


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


@dataclass
class Stage:
    trainable: set[str]  # parameter names
    steps: int
    lr: float


@dataclass
class Plan:
    """The stages of a run (one for every strategy but staged) and the parameters that ever train."""

    stages: list[Stage]
    adapters: str | None = None  # "lora" when the model carries adapters
    all_trainable: set[str] = field(default_factory=set)

    def __post_init__(self):
        self.all_trainable = set().union(*(s.trainable for s in self.stages))

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)

    def stage_at(self, step: int) -> tuple[int, int]:
        """(stage index, the stage's first step) for a global step; past the end: the last stage."""
        start = 0
        for i, s in enumerate(self.stages):
            if step < start + s.steps or i == len(self.stages) - 1:
                return i, start
            start += s.steps
        raise AssertionError("a plan has at least one stage")

    def apply(self, model: nn.Module, stage: int) -> None:
        """requires_grad on exactly the stage's parameters."""
        names = self.stages[stage].trainable
        for n, p in model.named_parameters():
            p.requires_grad_(n in names)


def build_plan(model: nn.Module, tc: TrainConfig) -> Plan:
    """Apply the strategy's structural change (LoRA adapters) to the model and return its plan."""
    if tc.strategy not in STRATEGIES:
        raise MMDialogError(f"train.strategy must be one of {', '.join(STRATEGIES)}, got {tc.strategy!r}")
    if tc.strategy != "partial" and tc.freeze:
        raise MMDialogError(f"train.freeze is set but train.strategy={tc.strategy!r}; it applies to strategy=partial")
    if tc.strategy != "staged" and tc.stages:
        raise MMDialogError(f"train.stages is set but train.strategy={tc.strategy!r}; it applies to strategy=staged")
    names = [n for n, _ in model.named_parameters()]
    if tc.strategy == "full":
        return Plan([Stage(set(names), tc.max_steps, tc.lr)])
    if tc.strategy == "partial":
        frozen = matching(names, tc.freeze, "train.freeze")
        if len(frozen) == len(names):
            raise MMDialogError("train.freeze freezes every parameter; nothing would train")
        return Plan([Stage(set(names) - frozen, tc.max_steps, tc.lr)])
    if tc.strategy == "staged":
        if not tc.stages:
            raise MMDialogError("train.strategy=staged needs train.stages: a list of {trainable: [patterns], steps: N, lr: X}")
        adapters = None
        if any("lora_" in p for s in tc.stages for p in s.trainable):  # a stage trains adapters: inject them
            inject_lora(model, tc.lora)
            names, adapters = [n for n, _ in model.named_parameters()], "lora"
        stages = []
        for i, s in enumerate(tc.stages):
            if s.steps <= 0:
                raise MMDialogError(f"train.stages[{i}].steps must be positive, got {s.steps}")
            stages.append(Stage(matching(names, s.trainable or ("*",), f"train.stages[{i}].trainable"), s.steps,
                                s.lr or tc.lr))
        return Plan(stages, adapters=adapters)
    inject_lora(model, tc.lora)
    names = [n for n, _ in model.named_parameters()]
    trainable = {n for n in names if ".lora_" in n}
    if tc.lora.also_train:
        trainable |= matching(names, tc.lora.also_train, "train.lora.also_train")
    return Plan([Stage(trainable, tc.max_steps, tc.lr)], adapters="lora")


# ----------------------------------------------------------------------------- LoRA (peft)

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


# ----------------------------------------------------------------------------- gradient checkpointing

def enable_gradient_checkpointing(model: nn.Module) -> int:
    """Recompute each decoder block's activations in the backward pass instead of storing them. The blocks
    keep their parameters and names (the forward is wrapped on the instance); dropout masks are replayed
    (checkpoint preserves the RNG state). Returns the number of blocks wrapped."""
    decoder = model.decoder
    if hasattr(decoder, "lm") and hasattr(decoder.lm, "gradient_checkpointing_enable"):  # Hugging Face decoder
        decoder.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return len(getattr(decoder, "layers", []))
    blocks = getattr(decoder, "blocks", None)
    if blocks is None:
        raise MMDialogError(f"train.grad_checkpointing: decoder {type(decoder).__name__} has no blocks to checkpoint")
    for block in blocks:
        forward = block.forward

        def checkpointed(*args, _forward=forward, **kwargs):
            if not torch.is_grad_enabled():
                return _forward(*args, **kwargs)
            return checkpoint(_forward, *args, use_reentrant=False, **kwargs)

        block.forward = checkpointed
    return len(blocks)
