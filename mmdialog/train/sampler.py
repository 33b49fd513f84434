"""Which conversations each optimizer step trains on: seeded, sharded across processes, resumable mid-epoch.

Epoch e visits a permutation of the dataset drawn from (seed, e) alone, so the order never depends on how
many steps ran before, in which process, or whether the run was restarted. Each step takes the next
`batch_size` indices of the permutation (the global batch; an epoch's remainder is dropped), splits them
into `micro` consecutive micro-batches (gradient accumulation), and each micro-batch into `world_size`
consecutive shards, one per process:

    global batch  [i0 i1 i2 i3 i4 i5 i6 i7]      batch_size 8, micro 2, world_size 2
    micro-batch 0 [i0 i1 i2 i3]   rank 0: [i0 i1]   rank 1: [i2 i3]
    micro-batch 1 [i4 i5 i6 i7]   rank 0: [i4 i5]   rank 1: [i6 i7]

So one process with micro=1 sees exactly the conversations that N processes with accumulation see together
in a step. The position (epoch, step within it) is the whole state: a resumed run draws the same batches.

With `group` (train.group_by_length) and the conversations' token counts, each run of `group` global
batches of the permutation is sorted by length before it is cut into batches, and the epoch's batches are
then shuffled (HF's group_by_length, by megabatch): a batch holds conversations of similar length, so the
collator pads less, while every conversation is still visited once per epoch in a seeded order.
"""

from __future__ import annotations

import numpy as np

from mmdialog.errors import MMDialogError


class StepSampler:
    def __init__(self, n: int, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1, micro: int = 1,
                 lengths=None, group: int = 0):
        if batch_size % (micro * world_size):
            raise MMDialogError(f"train.batch_size={batch_size} must split evenly into train.grad_accum={micro} "
                                f"micro-batches on each of {world_size} process(es) (a multiple of {micro * world_size})")
        if n < batch_size:
            raise MMDialogError(f"the training set has {n} conversations, fewer than train.batch_size={batch_size}")
        if group and (lengths is None or len(lengths) != n):
            raise MMDialogError(f"train.group_by_length={group} needs each training conversation's token count; "
                                f"got {'none' if lengths is None else len(lengths)} for {n} conversations (datasets "
                                f"drawn anew per step, train.augment and data.lazy, have none: set it to 0)")
        self.n, self.batch_size, self.seed, self.group = n, batch_size, seed, group
        self.lengths = None if not group else np.asarray(lengths)
        self.rank, self.world_size, self.micro = rank, world_size, micro
        self.steps_per_epoch = n // batch_size
        self.epoch, self.index = 0, 0  # the next step is step `index` of epoch `epoch`
        self._perm_epoch, self._perm = -1, None

    @classmethod
    def for_dataset(cls, dataset, tc, *, rank: int = 0, world_size: int = 1) -> "StepSampler":
        """The sampler a TrainConfig asks for over `dataset` (its lengths read only for train.group_by_length)."""
        lengths = dataset.lengths() if tc.group_by_length and hasattr(dataset, "lengths") else None
        return cls(len(dataset), tc.batch_size, seed=tc.seed, rank=rank, world_size=world_size, micro=tc.grad_accum,
                   group=tc.group_by_length, lengths=lengths)

    def permutation(self, epoch: int) -> np.ndarray:
        if self._perm_epoch != epoch:
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            if self.group:
                perm = self._grouped(perm, np.random.default_rng([self.seed, epoch, 1]))
            self._perm, self._perm_epoch = perm, epoch
        return self._perm

    def _grouped(self, perm: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """perm's batches of similar length: runs of `group` batches sorted by length (longest first, ties in
        perm's order), cut into batches, the epoch's batches shuffled. The remainder that no step visits
        stays at the end."""
        b, used = self.batch_size, self.steps_per_epoch * self.batch_size
        mega = b * self.group
        runs = [perm[i:i + mega] for i in range(0, used, mega)]
        ordered = np.concatenate([r[np.argsort(-self.lengths[r], kind="stable")] for r in runs])
        batches = ordered.reshape(self.steps_per_epoch, b)[rng.permutation(self.steps_per_epoch)]
        return np.concatenate([batches.reshape(-1), perm[used:]])

    def global_batch(self) -> list[int]:
        """The next step's indices over all processes, without advancing."""
        start = self.index * self.batch_size
        return self.permutation(self.epoch)[start:start + self.batch_size].tolist()

    def next(self) -> list[list[int]]:
        """This process's micro-batches for the next step (micro lists of batch_size / micro / world_size
        indices), and advance."""
        batch = self.global_batch()
        per_micro = self.batch_size // self.micro
        shard = per_micro // self.world_size
        out = []
        for m in range(self.micro):
            mb = batch[m * per_micro:(m + 1) * per_micro]
            out.append(mb[self.rank * shard:(self.rank + 1) * shard])
        self.index += 1
        if self.index == self.steps_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index, "n": self.n, "batch_size": self.batch_size,
                "seed": self.seed, "group": self.group}

    def load_state_dict(self, state: dict) -> None:
        for key in ("n", "batch_size", "seed", "group"):
            if state.get(key, 0) != getattr(self, key):
                what = {"n": "training conversations", "batch_size": "train.batch_size", "seed": "train.seed",
                        "group": "train.group_by_length"}[key]
                raise MMDialogError(f"cannot resume: the checkpoint's data order is for {what} = {state.get(key, 0)}, "
                                    f"this run has {getattr(self, key)}")
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
