"""The training loop: AdamW, warmup + cosine, gradient clipping, mixed precision, accumulation, data parallel,
fine-tuning strategies, progress, JSONL logs, and checkpoints that survive being killed.

One optimizer step:

    the sampler gives this process its share of the global batch, in grad_accum micro-batches
    the weight of the whole global batch (supervised targets, or their message weights) is summed over processes
    each micro-batch: objective -> (sum of token losses, weight); backward of sum * world_size / global weight
        (DDP averages gradients over processes, so they sum to the gradient of the global batch's mean loss;
         gradients are synchronised on the last micro-batch only)
    a non-finite loss or gradient stops the run (or skips the batch, train.on_nan=skip) before the weights change
    clip, step, and every train.save_every steps a resumable checkpoint; SIGTERM saves one and stops

Resuming (resume=True) loads the latest OUT/checkpoints/step-N: weights, optimizer, schedule, scaler, RNG
states and the data position, so the run continues as if never stopped (bitwise on CPU).
"""

from __future__ import annotations

import json
import math
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from mmdialog.config import Config, TrainConfig
from mmdialog.data.collate import Collator
from mmdialog.data.dataset import ConversationDataset
from mmdialog.data.formats import DataSource
from mmdialog.data.processor import Processor
from mmdialog.data.tokenizer import ChatTokenizer
from mmdialog.data.worlds.shapes import load_split, record_to_conversation
from mmdialog.errors import MMDialogError
from mmdialog.model import MultimodalLM, build_model, count_parameters
from mmdialog.objectives.lm import NextTokenObjective, target_weights
from mmdialog.train.checkpoint import (latest_training_checkpoint, load_training_state, rng_state,
                                       save_checkpoint, save_training_checkpoint, set_rng_state)
from mmdialog.train.distributed import (Dist, check_fsdp, full_optimizer_state, full_state_dict, full_tensor,
                                        load_full_optimizer_state, load_full_state_dict, materialize, meta_copy,
                                        shard_fsdp)
from mmdialog.train.muon import Muon
from mmdialog.train.sampler import StepSampler
from mmdialog.train.strategies import (ADAPTERS, Plan, build_plan, enable_gradient_checkpointing, lora_state, merge_lora,
                                      save_adapters)

MAX_CONSECUTIVE_SKIPS = 20  # train.on_nan=skip: this many non-finite batches in a row stop the run anyway


@dataclass
class TrainResult:
    steps: int
    wall_seconds: float
    tokens: int
    tokens_per_second: float
    final_loss: float
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, loss)
    skipped: int = 0  # conversations the dataset left out
    stopped: str = ""  # "SIGTERM" when a signal ended the run early (after saving a checkpoint)
    resumed_from: int = 0  # the step the run resumed from (0: a fresh run)
    skipped_batches: int = 0  # batches skipped for a non-finite loss (train.on_nan=skip)
    precision: str = ""  # what it trained in: bf16 | fp16 | fp32 (train.precision=auto decides on the machine)
    validation: list[dict] = field(default_factory=list)  # {"step", "val_accuracy", "val_loss", ...} (train.eval_*)


def world_texts(records: list[dict]) -> list[str]:
    return [t for r in records for rd in r["rounds"] for t in (rd["question"], rd["answer"])]


def lr_factor(step: int, progress: float, cfg: TrainConfig, warmup: int | None = None) -> float:
    """Linear warmup over steps, then cosine down to min_lr_ratio over the run's progress in [0, 1]."""
    warmup = cfg.warmup_steps if warmup is None else warmup
    if step < warmup:
        return (step + 1) / warmup
    cos = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cos


def cpu_has_native_bf16() -> bool:
    """True where the CPU multiplies bf16 in hardware (AVX512-BF16 or AMX). Elsewhere bf16 matmuls are
    emulated and slower than fp32 (measured 2.5x slower on an AVX512 Xeon without them: benchmarks/train_step.py)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def time_precisions(objective, batch: dict, repeats: int = 2) -> dict[str, float]:
    """Seconds of one forward + backward of `batch` in bf16 autocast and in fp32 (the best of `repeats`
    after one warm-up each). Native bf16 is not always faster on a CPU: at the demo's width (128) the casts
    cost about what the bf16 matmuls save, and on some CPUs bf16 is 25% slower than fp32
    (benchmarks/train_step.py). Leaves no trace: gradients are cleared and the RNG state restored."""
    params = [p for p in objective.parameters() if p.requires_grad]
    rng = torch.get_rng_state()
    times = {}
    for precision in ("bf16", "fp32"):
        best = float("inf")
        for i in range(repeats + 1):
            t = time.perf_counter()
            with autocast_context(precision):
                loss, _ = objective(batch)
            loss.backward()
            if i:
                best = min(best, time.perf_counter() - t)
            for p in params:
                p.grad = None
        times[precision] = best
    torch.set_rng_state(rng)
    return times


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda"):
        raise MMDialogError(f"train.device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise MMDialogError("train.device=cuda but torch sees no CUDA device")
    return torch.device(device)


def resolve_precision(precision: str, device: str = "cpu") -> str:
    if precision == "auto":
        if device == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_has_native_bf16() else "fp32"
    if precision not in ("bf16", "fp16", "fp32"):
        raise MMDialogError(f"train.precision must be auto, bf16, fp16 or fp32, got {precision!r}")
    if precision == "fp16" and device != "cuda":
        raise MMDialogError("train.precision=fp16 needs CUDA (a gradient scaler guards its small range there); "
                            "on CPU use bf16 or fp32")
    return precision


def autocast_context(precision: str, device: str = "cpu"):
    precision = resolve_precision(precision, device)
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


class Optimizers:
    """Several optimizers stepped as one (Muon for the hidden matrices, AdamW for the rest): the
    param_groups of all of them (the loop sets each group's lr), one step, one zero_grad, one state dict."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [g for o in self.optimizers for g in o.param_groups]

    @property
    def state(self) -> dict:
        return {k: v for o in self.optimizers for k, v in o.state.items()}

    def step(self, closure=None):
        for o in self.optimizers:
            o.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        parts = state.get("optimizers")
        if parts is None or len(parts) != len(self.optimizers):
            raise MMDialogError(f"the optimizer state holds {len(parts) if parts else 'one'} optimizer(s), this run "
                                f"has {len(self.optimizers)} (train.optimizer changed since the checkpoint?)")
        for o, st in zip(self.optimizers, parts):
            o.load_state_dict(st)


OPTIMIZERS = ("adamw", "muon")


def muon_matrices(model: torch.nn.Module) -> set[int]:
    """ids of the weights Muon updates: every nn.Linear's matrix but the output head (tied to the embedding
    or not) and LoRA's low-rank factors; embeddings, convolutions, norms and biases stay with AdamW, as
    Muon's authors advise."""
    return {id(m.weight) for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and not name.endswith("lm_head") and ".lora_" not in f".{name}"
            and m.weight.dim() == 2}


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, names: set[str] | None = None):
    """AdamW over `names` (default: the parameters that require grad), with weight decay on matrices only
    (not norms, biases), and the media encoders at lr * encoder_lr_scale: trained from scratch at the
    decoder's rate, the image encoder collapses to the same output for every image within a few hundred
    steps, and the decoder then ignores images. A parameter frozen for a while (staged training) has no
    gradient then, and AdamW leaves it and its state alone.

    train.optimizer=muon (the default): the hidden matrices (muon_matrices) get Muon instead
    (torch.optim.Muon, with its Newton-Schulz iteration in fp32 on a CPU: train/muon.py), its update
    scaled to AdamW's RMS (adjust_lr_fn="match_rms_adamw") so that one lr serves both; on the demo world
    it reads the picture far sooner than AdamW (benchmarks/learning_curve.py)."""
    if cfg.optimizer not in OPTIMIZERS:
        raise MMDialogError(f"train.optimizer must be one of {', '.join(OPTIMIZERS)}, got {cfg.optimizer!r}")
    muon = muon_matrices(model) if cfg.optimizer == "muon" else set()
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)} - muon
    adam_groups, muon_groups = [], []
    for is_encoder in (False, True):
        params = [(n, p) for n, p in model.named_parameters()
                  if (p.requires_grad if names is None else n in names) and n.startswith("encoders.") == is_encoder]
        scale = cfg.encoder_lr_scale if is_encoder else 1.0
        muon_groups.append({"params": [p for _, p in params if id(p) in muon], "weight_decay": cfg.weight_decay,
                            "lr_scale": scale})
        adam_groups.append({"params": [p for _, p in params if p.dim() >= 2 and id(p) not in muon | embeddings],
                            "weight_decay": cfg.weight_decay, "lr_scale": scale})
        adam_groups.append({"params": [p for _, p in params if id(p) in embeddings], "weight_decay": cfg.weight_decay,
                            "lr_scale": scale * cfg.embed_lr_scale})
        adam_groups.append({"params": [p for _, p in params if p.dim() < 2], "weight_decay": 0.0, "lr_scale": scale})
    adam_groups = [g for g in adam_groups if g["params"]]
    muon_groups = [g for g in muon_groups if g["params"]]
    adamw = torch.optim.AdamW(adam_groups, lr=cfg.lr, betas=cfg.betas) if adam_groups or not muon_groups else None
    if not muon_groups:
        return adamw
    on_gpu = any(p.is_cuda for g in muon_groups for p in g["params"])  # bf16 Newton-Schulz there, else fp32
    muon_opt = Muon(muon_groups, lr=cfg.lr, adjust_lr_fn="match_rms_adamw",
                    ns_dtype=torch.bfloat16 if on_gpu else torch.float32)
    return Optimizers([muon_opt] + ([adamw] if adamw else []))


def prepare(cfg: Config, world_dir: Path | None, progress: bool = True, tokenizer: ChatTokenizer | None = None):
    """The tokenizer, the model, and the processed training set: the records of cfg.data.train_file when
    set (invalid ones land in dataset.skipped with their line and reason), else the world's train split.
    The tokenizer is the one given (a resumed run reuses its checkpoint's), else train.init_from's, else
    cfg.data.tokenizer when set, else trained on the training text. With train.init_from the model starts
    from that checkpoint's weights (fine-tuning), which must have been built from the same model section."""
    if cfg.data.train_file:
        data = DataSource(cfg.data.train_file, cfg.data.format, media_root=cfg.data.media_root or None)
        texts = data.texts  # streamed: the files are read once for the tokenizer, once for the examples
    else:
        train_records = load_split(world_dir, "train")
        texts = lambda: world_texts(train_records) + ["Describe the picture."]  # noqa: E731
    tokenizer, model = tokenizer_and_model(cfg, texts, tokenizer)
    processor = Processor.for_model(tokenizer, model, max_length=cfg.model.decoder.max_seq_len)
    aug = cfg.train.augment
    if aug.flip or aug.cut_history or aug.distractors or aug.colour or aug.paraphrase:
        if cfg.data.train_file:
            raise MMDialogError("train.augment needs the built-in world (its scenes keep the labels true); "
                                "data.train_file is set")
        from mmdialog.data.worlds.shapes.augment import AugmentedWorldDataset

        dataset = AugmentedWorldDataset(train_records, world_dir, processor, flip=aug.flip,
                                        cut_history=aug.cut_history, distractors=aug.distractors, colour=aug.colour,
                                        paraphrase=aug.paraphrase, seed=cfg.train.seed)
    elif cfg.data.train_file:
        dataset = data.dataset(processor, modalities=model.encoders.keys(), progress=progress, lazy=cfg.data.lazy)
    else:
        convs = [record_to_conversation(r, world_dir) for r in train_records]
        dataset = ConversationDataset.build(convs, processor, desc="processing train", progress=progress)
    return tokenizer, model, processor, dataset


def tokenizer_and_model(cfg: Config, texts, tokenizer: ChatTokenizer | None = None):
    """The run's tokenizer and freshly seeded model. The tokenizer is the one given (a resumed run reuses its
    checkpoint's), else train.init_from's, else cfg.data.tokenizer when set, else trained on texts() (called
    only then). With train.init_from the model is that checkpoint's (same model section), else built anew."""
    init = _init_from(cfg) if cfg.train.init_from else None
    if tokenizer is None:
        tokenizer = init.tokenizer if init else ChatTokenizer.load(cfg.data.tokenizer) if cfg.data.tokenizer else \
            ChatTokenizer.train(texts(), cfg.tokenizer.vocab_size)
    torch.manual_seed(cfg.train.seed)
    if init is not None:
        return tokenizer, init.model.train()
    return tokenizer, build_model(cfg.model, vocab_size=tokenizer.vocab_size, placeholder_ids=dict(tokenizer.media_ids))


def _init_from(cfg: Config):
    from mmdialog.config import to_dict
    from mmdialog.export import load_any

    ck = load_any(cfg.train.init_from)
    mine, theirs = to_dict(cfg.model), to_dict(ck.config.model)
    if mine != theirs:
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        raise MMDialogError(f"train.init_from={cfg.train.init_from}: it was built from another model section (model."
                            f"{', model.'.join(diff)} differ); train with its model section (a checkpoint's config.yaml)")
    return ck


class Schedule:
    """The learning rate of each step: per stage, linear warmup then cosine to lr * min_lr_ratio. Without
    stages (one stage) the cosine also follows the wall-clock budget when train.max_minutes is set.
    Its state is the step and the elapsed training time, which is what a resumed run needs."""

    def __init__(self, plan: Plan, tc: TrainConfig):
        self.plan, self.tc = plan, tc
        self.step, self.elapsed = 0, 0.0

    @property
    def budget(self) -> float:
        return self.tc.max_minutes * 60.0

    def progress(self) -> float:
        """The run's progress in [0, 1+]: by steps, or by time when the budget runs out first."""
        prog = self.step / self.plan.total_steps
        return max(prog, self.elapsed / self.budget) if self.budget > 0 else prog

    def lr(self) -> float:
        stage, start = self.plan.stage_at(self.step)
        s = self.plan.stages[stage]
        local = self.step - start
        prog = local / s.steps
        if len(self.plan.stages) == 1 and self.budget > 0:
            prog = max(prog, self.elapsed / self.budget)
        return s.lr * lr_factor(local, prog, self.tc, warmup=min(self.tc.warmup_steps, s.steps))

    def state_dict(self) -> dict:
        return {"step": self.step, "elapsed": self.elapsed}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.elapsed = int(state["step"]), float(state["elapsed"])


class _Stop:
    """SIGTERM (a scheduler preempting the job) sets a flag; the loop saves a checkpoint and stops at the
    end of the step."""

    def __init__(self):
        self.requested = False
        self._old = None

    def __enter__(self):
        try:
            self._old = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: no handler, no graceful stop
            self._old = None
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()} if device.type != "cpu" else batch


def _batch_ids(dataset, indices: list[list[int]]) -> str:
    ids = getattr(dataset, "ids", None)
    flat = [i for mb in indices for i in mb]
    names = [str(ids[i]) if ids is not None and i < len(ids) else f"#{i}" for i in flat]
    return ", ".join(names[:8]) + (f" ... ({len(names)} in all)" if len(names) > 8 else "")


def train(cfg: Config, model: MultimodalLM, tokenizer: ChatTokenizer, dataset, out_dir: Path, *,
          progress: bool = True, log=print, meta: dict | None = None, resume: bool = False,
          dist: Dist | None = None, objective: torch.nn.Module | None = None, collate=None) -> TrainResult:
    """Train `model` in place on `dataset` (any map-style dataset of Examples) and write OUT/checkpoint (the
    final model: adapters merged, ready for chat/eval/export), OUT/train_log.jsonl and, with train.save_every,
    resumable checkpoints in OUT/checkpoints/. Under torchrun pass the Dist of init_distributed().

    objective, collate: another objective around the same model and the collator its dataset's items need
    (pretraining: mmdialog/pretrain). The objective maps a batch to (sum of losses, weight) like
    NextTokenObjective, and has batch_weight(batch), a micro-batch's weight known before the forward pass;
    a dict attribute `last_terms` (floats) is added to each train_log.jsonl record. Its own parameters must
    be reachable from `model` (to be optimised and saved). Default: next-token loss on assistant replies."""
    tc = cfg.train
    dist = dist or Dist()
    out_dir = Path(out_dir)
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    if tc.on_nan not in ("stop", "skip"):
        raise MMDialogError(f"train.on_nan must be stop or skip, got {tc.on_nan!r}")
    if tc.grad_accum < 1:
        raise MMDialogError(f"train.grad_accum must be at least 1, got {tc.grad_accum}")
    device = resolve_device(tc.device)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    precision = resolve_precision(tc.precision, device.type)  # once: it reads /proc/cpuinfo
    # auto on a CPU with native bf16: time both on the first batch and keep the faster (one process only:
    # processes that chose differently would not match)
    time_auto = tc.precision == "auto" and device.type == "cpu" and precision == "bf16" and not dist.enabled
    check_fsdp(tc, precision)
    fsdp = dist.enabled and tc.distributed == "fsdp"
    sampler = StepSampler(len(dataset), tc.batch_size, seed=tc.seed, rank=dist.rank, world_size=dist.world_size,
                          micro=tc.grad_accum, group=tc.group_by_length,
                          lengths=dataset.lengths() if tc.group_by_length and hasattr(dataset, "lengths") else None)
    collate = collate or Collator(tokenizer.pad_id, pack=tc.pack, pack_length=tc.pack_length or
                                 model.decoder.max_seq_len, loss_turns=tc.loss_turns)
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)

    plan = build_plan(model, tc)  # LoRA adapters are injected here
    if tc.grad_checkpointing:
        enable_gradient_checkpointing(model)
    model.to(device)
    objective = objective if objective is not None else NextTokenObjective(model)
    template = None  # fsdp: process 0 gathers the full weights into this unsharded copy to save them
    if fsdp:
        plan.apply(model, 0)  # one stage (staged is refused): requires_grad is set before sharding
        template = meta_copy(model) if dist.is_main else None
        shard_fsdp(objective, model, dist, device)
    opt = make_optimizer(model, tc, names=plan.all_trainable)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    schedule = Schedule(plan, tc)
    ckpt_root = out_dir / "checkpoints"
    ckpt_meta = {**(meta or {}), "adapters": plan.adapters, "strategy": tc.strategy}
    tokens, ema, losses, skipped_batches, resumed_from = 0, None, [], 0, 0

    if resume:
        latest = latest_training_checkpoint(ckpt_root)
        if latest is None:
            log(f"resume: no checkpoint in {ckpt_root}; starting from step 0")
        else:
            resumed_from = _load_resume(latest, model, opt, scaler, schedule, sampler, dataset, dist,
                                        objective if fsdp else None)
            st = load_training_state(latest)
            tokens, ema, losses = st["tokens"], st["ema"], [tuple(x) for x in st["losses"]]
            skipped_batches = st["skipped_batches"]
            log(f"resumed from {latest} (step {resumed_from})")

    n_trainable = sum(p.numel() for n, p in model.named_parameters() if n in plan.all_trainable)
    log(f"model: {count_parameters(model):,} parameters ({n_trainable:,} trained, strategy {tc.strategy}); "
        f"data: {dataset.report() if hasattr(dataset, 'report') else len(dataset)}; precision: "
        f"{'bf16 or fp32, timed on the first batch' if time_auto else precision} "
        f"(train.precision={tc.precision}); device: {device}"
        + (f"; {dist.world_size} processes ({tc.distributed})" if dist.enabled else ""))

    batch_weight = getattr(objective, "batch_weight", None) or (
        lambda b: target_weights(b["labels"], b.get("loss_weights")).sum())
    ddp, stage = None, None
    log_file = _open_log(out_dir / "train_log.jsonl", resumed_from) if dist.is_main else None
    t0 = time.perf_counter() - schedule.elapsed
    bar = tqdm(total=None if schedule.budget > 0 else plan.total_steps, initial=schedule.step, desc="train",
               unit="step", disable=not progress or not dist.is_main, dynamic_ncols=True)
    stopped, consecutive_skips = "", 0
    from mmdialog.train.validation import Validator

    validator = Validator.build(cfg, model, tokenizer, world=(meta or {}).get("world"), log=log if dist.is_main else None)
    validation: list[dict] = []

    def validate() -> None:
        """The gold-history scorer on the held-out records: into the JSONL log, the bar and the result. Every
        process runs it (an FSDP model needs them all for a forward pass); process 0 writes it."""
        v = {"step": schedule.step, **validator(model)}
        validation.append(v)
        if log_file:
            log_file.write(json.dumps(v) + "\n")
            log_file.flush()

    def saveable():
        """The model to save: itself, or under fsdp (on process 0) the template holding the gathered weights.
        A collective under fsdp."""
        if not fsdp:
            return model
        full = full_state_dict(model, dist)
        return materialize(template, full) if dist.is_main else None

    def state() -> dict:
        return {"optimizer": full_optimizer_state(objective, opt) if fsdp else opt.state_dict(),
                "scheduler": schedule.state_dict(), "scaler": scaler.state_dict(),
                "sampler": sampler.state_dict(), "dataset": getattr(dataset, "state_dict", lambda: None)(),
                "rng": dist.gather(rng_state()), "tokens": tokens, "ema": ema, "losses": losses,
                "skipped_batches": skipped_batches, "world_size": dist.world_size,
                "distributed": "fsdp" if fsdp else "ddp"}

    def save_resumable() -> None:
        st, m = state(), saveable()  # collectives: every process takes part
        if dist.is_main:
            save_training_checkpoint(ckpt_root, schedule.step, m, tokenizer, cfg,
                                     {**ckpt_meta, "tokens": tokens}, st, tc.keep_last)
        dist.barrier()

    with _Stop() as stop:
        while schedule.step < plan.total_steps and schedule.progress() < 1.0:
            s, _ = plan.stage_at(schedule.step)
            if s != stage:  # which parameters train changed: DDP must be rebuilt over the new set
                if not fsdp:
                    plan.apply(model, s)
                stage = s
                if dist.enabled and not fsdp:
                    from torch.nn.parallel import DistributedDataParallel as DDP

                    # a modality absent from a batch leaves its encoder without gradients
                    ddp = DDP(objective, device_ids=[device.index] if device.type == "cuda" else None,
                              find_unused_parameters=len(model.encoders) > 1)
                if len(plan.stages) > 1 and dist.is_main:
                    log(f"stage {s + 1}/{len(plan.stages)} from step {schedule.step}: "
                        f"{len(plan.stages[s].trainable)} parameter tensors train at lr {plan.stages[s].lr:g}")
            lr = schedule.lr()
            for group in opt.param_groups:
                group["lr"] = lr * group["lr_scale"]
            if hasattr(dataset, "set_epoch"):  # augmentation drawn anew each epoch, reproducibly
                dataset.set_epoch(sampler.epoch)
            indices = sampler.next()
            batches = [_to(collate([dataset[i] for i in mb]), device) for mb in indices]
            if time_auto:
                times, time_auto = time_precisions(objective, batches[0]), False
                precision = "bf16" if times["bf16"] < 0.95 * times["fp32"] else "fp32"
                log(f"precision auto: one forward + backward takes {times['bf16'] * 1000:.0f} ms in bf16, "
                    f"{times['fp32'] * 1000:.0f} ms in fp32 on this CPU: training in {precision}")
            weight = dist.all_reduce(torch.stack([batch_weight(b) for b in batches]).sum().double().reshape(1))
            norm = float(weight) / dist.world_size  # backward of sum / norm: DDP's mean over processes sums them
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            for i, b in enumerate(batches):
                sync = ddp is None or i == len(batches) - 1
                if fsdp:  # reduce-scatter the gradients on the last micro-batch only
                    objective.set_requires_gradient_sync(i == len(batches) - 1)
                with (nullcontext() if sync else ddp.no_sync()), autocast_context(precision, device.type):
                    part, _ = (ddp or objective)(b)
                scaler.scale(part / max(norm, 1e-12)).backward()
                loss_sum += part.detach().double()
            step_tokens = sum(int(b["attention_mask"].sum()) for b in batches)
            stats = dist.all_reduce(torch.stack([loss_sum, torch.tensor(float(stop.requested), dtype=torch.float64,
                                                                        device=device),
                                                 torch.tensor(float(step_tokens), dtype=torch.float64, device=device)]))
            loss = float(stats[0]) / max(float(weight), 1e-12)
            stop_now = float(stats[1]) > 0
            scaler.unscale_(opt)
            gnorm = full_tensor(torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip))
            # With fp16 an overflowing gradient is the scaler's business (it skips the step and lowers the scale).
            bad = not math.isfinite(loss) or (not scaler.is_enabled() and not math.isfinite(float(gnorm)))
            if bad:
                where = (f"step {schedule.step + 1}: loss {loss}, gradient norm {float(gnorm)} on batch "
                         f"[{_batch_ids(dataset, indices)}] (lr {lr:.2e})")
                opt.zero_grad(set_to_none=True)
                consecutive_skips += 1
                if tc.on_nan == "stop" or consecutive_skips > MAX_CONSECUTIVE_SKIPS:
                    bar.close()
                    if log_file:
                        log_file.close()
                    raise MMDialogError(f"non-finite loss or gradient at {where}; the weights were not updated. "
                                        + ("Lower train.lr, or set train.on_nan=skip to skip such batches"
                                           if tc.on_nan == "stop" else f"{consecutive_skips} batches in a row"))
                skipped_batches += 1
                log(f"skipped a non-finite batch at {where}")
                if stop_now:
                    stopped = "SIGTERM"
                    save_resumable()
                    break
                continue
            consecutive_skips = 0
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            schedule.step += 1
            schedule.elapsed = time.perf_counter() - t0
            tokens += int(stats[2])
            ema = loss if ema is None else 0.9 * ema + 0.1 * loss
            step = schedule.step
            if (step % tc.log_every == 0 or step == 1) and dist.is_main:
                rec = {"step": step, "loss": loss, "loss_ema": ema, "lr": lr, "grad_norm": float(gnorm),
                       "tokens": tokens, "elapsed": schedule.elapsed, "tokens_per_second": tokens / schedule.elapsed,
                       **getattr(objective, "last_terms", {})}
                log_file.write(json.dumps(rec) + "\n")
                log_file.flush()
                losses.append((step, loss))
            bar.update(1)
            postfix = {"loss": f"{ema:.3f}", "lr": f"{lr:.1e}", "tok/s": f"{tokens / schedule.elapsed:.0f}"}
            if schedule.budget > 0:
                postfix["left"] = f"{max(schedule.budget - schedule.elapsed, 0):.0f}s"
            if validator is not None and tc.eval_every and step % tc.eval_every == 0:
                validate()
            if validation:
                postfix["val"] = f"{validation[-1]['val_accuracy']:.3f}"
            bar.set_postfix(postfix)
            if stop_now:
                stopped = "SIGTERM"
                save_resumable()
                break
            if tc.save_every and step % tc.save_every == 0:
                save_resumable()
    if validator is not None and not stopped and (not validation or validation[-1]["step"] != schedule.step):
        validate()  # the end of the run
    if validation and dist.is_main:
        v = validation[-1]
        log(f"validation at step {v['step']}: accuracy {v['val_accuracy']:.3f} over {v['val_turns']} turns, "
            f"loss {v['val_loss']:.4f} ({validator.source})")
    bar.close()
    if log_file:
        log_file.close()
    wall = schedule.elapsed
    if stopped:
        log(f"stopped by {stopped} after step {schedule.step}; checkpoint in {ckpt_root}; continue with --resume")
    elif tc.save_every and schedule.step % tc.save_every and schedule.step > resumed_from:
        save_resumable()  # the final state, so that --resume of a finished run has nothing left to do
    sync = _check_in_sync(model, dist, fsdp)
    final = saveable()
    model.eval()
    adapters = None
    if plan.adapters == "lora" and not stopped:
        adapters = lora_state(model)  # kept beside the merged weights: `mmdialog export` writes them for peft
        merge_lora(model)  # deployment: plain weights, the names and shapes of the model without adapters
    if dist.is_main:
        final_meta = {**ckpt_meta, "adapters": plan.adapters if stopped else None, "step": schedule.step,
                      "tokens": tokens, **sync}
        save_checkpoint(out_dir / "checkpoint", final, tokenizer, cfg, final_meta,
                        extra=None if adapters is None else lambda tmp: save_adapters(tmp / ADAPTERS, adapters, tc.lora))
    dist.barrier()
    return TrainResult(schedule.step, wall, tokens, tokens / max(wall, 1e-9), ema if ema is not None else float("nan"),
                       losses, len(getattr(dataset, "skipped", [])), stopped, resumed_from, skipped_batches, precision,
                       validation)


def _check_in_sync(model, dist: Dist, fsdp: bool = False) -> dict:
    """Under DDP every process must end with the same parameters: compare their digests (an error if not).
    Under FSDP each process holds its shard: nothing to compare."""
    if not dist.enabled:
        return {}
    if fsdp:
        return {"processes": dist.world_size, "distributed": "fsdp"}
    import hashlib

    h = hashlib.sha1()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    digests = dist.gather(h.hexdigest())
    if len(set(digests)) > 1:
        raise MMDialogError(f"the {dist.world_size} processes ended with different parameters (sha1 {digests}); "
                            "data-parallel training went out of sync")
    return {"processes": dist.world_size, "param_sha1_by_rank": digests}


def _open_log(path: Path, resumed_from: int):
    """The JSONL log, appended to on resume after dropping records past the resumed step (they are redone)."""
    if resumed_from and path.is_file():
        keep = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= resumed_from:
                    keep.append(line)
            except ValueError:
                continue  # a line cut short by the kill
        path.write_text("".join(k + "\n" for k in keep))
        return open(path, "a")
    return open(path, "w")


def _load_resume(directory: Path, model, opt, scaler, schedule, sampler, dataset, dist: Dist, fsdp_root=None) -> int:
    """Load a training checkpoint into the freshly built objects; returns its step. fsdp_root: the sharded
    root module under train.distributed=fsdp (the checkpoint holds full weights and optimizer state)."""
    from safetensors.torch import load_file, load_model

    st = load_training_state(directory)
    if st["world_size"] != dist.world_size:
        raise MMDialogError(f"cannot resume {directory}: it was written by {st['world_size']} process(es), this run "
                            f"has {dist.world_size} (the RNG states and data shards are per process)")
    meta = json.loads((directory / "meta.json").read_text())
    written, mine = st.get("distributed", "ddp"), "fsdp" if fsdp_root is not None else "ddp"
    if written != mine:  # the optimizer state is sharded-and-gathered by name under fsdp, by index otherwise
        raise MMDialogError(f"cannot resume {directory}: it was written with train.distributed={written}, this run "
                            f"uses {mine} (resuming across the two is not supported); set train.distributed={written}")
    if fsdp_root is not None:
        try:
            load_full_state_dict(model, load_file(str(directory / "model.safetensors")))
        except MMDialogError as e:
            raise MMDialogError(f"cannot resume {directory} with train.distributed=fsdp: {e}") from None
        load_full_optimizer_state(fsdp_root, opt, st["optimizer"])
        missing, unexpected = [], []
    else:
        missing, unexpected = load_model(model, str(directory / "model.safetensors"), strict=False,
                                         device=str(next(model.parameters()).device))
    if missing or unexpected:
        raise MMDialogError(f"cannot resume {directory}: its weights are from another model or strategy "
                            f"(checkpoint strategy {meta.get('strategy')!r}): missing {sorted(missing)[:3]}, "
                            f"unexpected {sorted(unexpected)[:3]}")
    if fsdp_root is None:
        opt.load_state_dict(st["optimizer"])
    scaler.load_state_dict(st["scaler"])
    schedule.load_state_dict(st["scheduler"])
    sampler.load_state_dict(st["sampler"])
    if st.get("dataset") is not None and hasattr(dataset, "load_state_dict"):
        dataset.load_state_dict(st["dataset"])
    set_rng_state(st["rng"][dist.rank])
    return schedule.step

