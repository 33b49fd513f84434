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
             `mmdialog export` writes in peft's format. The adapters themselves are in modules/lora.py.

Gradient checkpointing (enable_gradient_checkpointing) recomputes each decoder block in the backward pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from mmdialog.config import TrainConfig
from mmdialog.errors import MMDialogError
from mmdialog.modules.lora import inject_lora, matching

STRATEGIES = ("full", "partial", "staged", "lora")


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


# ----------------------------------------------------------------------------- gradient checkpointing

def enable_gradient_checkpointing(model: nn.Module) -> int:
    """Recompute each decoder block's activations in the backward pass instead of storing them. The blocks
    keep their parameters and names (the forward is wrapped on the instance); dropout masks are replayed
    (checkpoint preserves the RNG state). Returns the number of blocks wrapped."""
    decoder = model.decoder
    blocks = decoder.blocks_in_order()
    if decoder.checkpoint_natively():  # a Hugging Face decoder: its own
        return len(blocks)
    if not blocks:
        raise MMDialogError(f"train.grad_checkpointing: decoder {type(decoder).__name__} has no blocks to checkpoint")
    for block in blocks:
        forward = block.forward

        def checkpointed(*args, _forward=forward, **kwargs):
            if not torch.is_grad_enabled():
                return _forward(*args, **kwargs)
            return checkpoint(_forward, *args, use_reentrant=False, **kwargs)

        block.forward = checkpointed
    return len(blocks)
