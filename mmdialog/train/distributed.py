"""Data-parallel training under torchrun: process group setup and the few collectives the trainer needs.

`torchrun --nproc_per_node=N -m mmdialog train ...` sets RANK, WORLD_SIZE, LOCAL_RANK and MASTER_ADDR/PORT;
`init_distributed` reads them and joins the group (gloo on CPU, NCCL on CUDA). Without them it returns a
single-process Dist whose collectives are no-ops, so the trainer has one code path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist

from mmdialog.errors import MMDialogError


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sum over processes, in place (returns t)."""
        if self.enabled:
            torch_dist.all_reduce(t, op=torch_dist.ReduceOp.SUM)
        return t

    def gather(self, obj) -> list:
        """Every process's obj, in rank order, on every process (picklable objects)."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size
        torch_dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.enabled:
            torch_dist.barrier()


def init_distributed(device_type: str = "cpu") -> Dist:
    """Join the process group torchrun describes in the environment (once), or a single-process Dist."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not torch_dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(local)
        torch_dist.init_process_group("nccl" if device_type == "cuda" else "gloo", rank=rank, world_size=world)
    return Dist(rank, world, local)


def destroy_distributed() -> None:
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()


# ---- FSDP (train.distributed=fsdp): parameters, gradients and optimizer state sharded across processes ----

DISTRIBUTED = ("ddp", "fsdp")


def check_fsdp(tc, precision: str) -> None:
    """Refuse, naming the setting, what train.distributed=fsdp does not support (or an unknown value)."""
    if tc.distributed not in DISTRIBUTED:
        raise MMDialogError(f"train.distributed must be ddp or fsdp, got {tc.distributed!r}")
    if tc.distributed != "fsdp":
        return
    if tc.strategy in ("lora", "staged"):
        raise MMDialogError(f"train.distributed=fsdp does not support train.strategy={tc.strategy} (LoRA adapters are "
                            "merged and stages change the trainable set on a whole model); use train.distributed=ddp, "
                            "or strategy full or partial")
    if tc.optimizer == "muon":
        raise MMDialogError("train.distributed=fsdp does not support train.optimizer=muon (Muon orthogonalises whole "
                            "matrices, FSDP shards them); set train.optimizer=adamw")
    if precision == "fp16":
        raise MMDialogError("train.distributed=fsdp does not support train.precision=fp16 (the gradient scaler does not "
                            "handle sharded gradients here); use bf16 or fp32")


def shard_fsdp(root: torch.nn.Module, model: torch.nn.Module, dist: Dist, device: torch.device) -> torch.nn.Module:
    """FSDP2 (torch.distributed.fsdp.fully_shard): each decoder block is its own unit (gathered for its forward
    and backward only), the rest of the model with `root` (the objective, whose forward is the training step:
    it calls the model) is the root unit. Parameter names do not change; they become DTensors.
    Gradients are averaged over processes like DDP's."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.world_size,))
    for block in model.decoder.blocks_in_order():
        fully_shard(block, mesh=mesh)
    fully_shard(root, mesh=mesh)
    return root


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def full_state_dict(model: torch.nn.Module, dist: Dist) -> dict[str, torch.Tensor] | None:
    """The unsharded state dict on CPU on process 0 (None elsewhere). A collective: every process calls it."""
    out = {}
    for name, t in model.state_dict().items():
        full = full_tensor(t.detach())  # all-gather of the shards
        if dist.is_main:
            out[name] = full.cpu().clone()
    return out if dist.is_main else None


def load_full_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy an unsharded state dict (every process has all of it) into the sharded model: each process keeps its
    shard. Raises MMDialogError on missing or unexpected names."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    own = model.state_dict(keep_vars=True)
    tied: dict[int, list[str]] = {}  # tied weights are one tensor under several names; a file may hold one of them
    for name, t in own.items():
        tied.setdefault(id(t), []).append(name)
    missing = sorted(names[0] for names in tied.values() if not any(n in state for n in names))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise MMDialogError(f"the weights do not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    with torch.no_grad():
        for names in tied.values():
            name = next(n for n in names if n in state)
            t, src = own[name], state[name]
            if isinstance(t, DTensor):
                shard = distribute_tensor(src.to(t.device, t.dtype), t.device_mesh, t.placements, src_data_rank=None)
                t.to_local().copy_(shard.to_local())
            else:
                t.copy_(src)


def meta_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of the model whose parameters and buffers are on the meta device (no memory; tied weights stay
    tied): a template for `materialize`."""
    import copy

    memo = {}
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) in memo:
            continue
        meta = torch.empty_like(t, device="meta")
        memo[id(t)] = torch.nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(t, torch.nn.Parameter) else meta
    return copy.deepcopy(model, memo)


def materialize(template: torch.nn.Module, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A copy of the meta template holding the tensors of `state` (its full state dict) as its weights; tied
    weights stay one tensor, so the copy saves and loads like the model it was made from."""
    import copy

    memo = {}
    for name, t in template.state_dict(keep_vars=True).items():
        if id(t) not in memo:
            v = state[name]
            memo[id(t)] = torch.nn.Parameter(v, requires_grad=False) if isinstance(t, torch.nn.Parameter) else v
    return copy.deepcopy(template, memo)


def full_optimizer_state(root: torch.nn.Module, opt: torch.optim.Optimizer) -> dict:
    """The optimizer state unsharded and keyed by parameter name, on CPU on process 0 (empty elsewhere). Collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(root, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_optimizer_state(root: torch.nn.Module, opt: torch.optim.Optimizer, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(root, opt, state, options=StateDictOptions(full_state_dict=True))
