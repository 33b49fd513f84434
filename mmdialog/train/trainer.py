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
from mmdialog.modelio import save_checkpoint
from mmdialog.modules.lora import ADAPTERS, lora_state, merge_lora, save_adapters
from mmdialog.objectives.base import Objective
from mmdialog.objectives.lm import NextTokenObjective
from mmdialog.train.checkpoint import (latest_training_checkpoint, load_training_state, rng_state,
                                       save_training_checkpoint, set_rng_state)
from mmdialog.train.distributed import (Dist, check_fsdp, full_optimizer_state, full_state_dict, full_tensor,
                                        load_full_optimizer_state, load_full_state_dict, materialize, meta_copy,
                                        shard_fsdp)
from mmdialog.train.muon import Muon
from mmdialog.train.sampler import StepSampler
from mmdialog.train.strategies import Plan, build_plan, enable_gradient_checkpointing

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
    # a group of their own only at another lr: at 1 the groups (and a resumed run's optimizer state) are as before
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)} - muon \
        if cfg.embed_lr_scale != 1.0 else set()
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
    from mmdialog.modelio import load_any

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


def wants_validation(tc: TrainConfig, world) -> bool:
    """Whether the run validates: with train.eval_file, or with train.eval_every on a world's val split."""
    if tc.eval_every < 0 or tc.eval_max_records < 0:
        raise MMDialogError(f"train.eval_every and train.eval_max_records must be >= 0, got {tc.eval_every} and "
                            f"{tc.eval_max_records}")
    return bool(tc.eval_file or (tc.eval_every and world))


def train(cfg: Config, model: MultimodalLM, tokenizer: ChatTokenizer, dataset, out_dir: Path, *,
          progress: bool = True, log=print, meta: dict | None = None, resume: bool = False,
          dist: Dist | None = None, objective: Objective | None = None, collate=None,
          validator=None) -> TrainResult:
    """Train `model` in place on `dataset` (any map-style dataset of Examples) and write OUT/checkpoint (the
    final model: adapters merged, ready for chat/eval/export), OUT/train_log.jsonl and, with train.save_every,
    resumable checkpoints in OUT/checkpoints/. Under torchrun pass the Dist of init_distributed().

    objective, collate: another objective around the same model and the collator its dataset's items need
    (pretraining: mmdialog/pretrain). The objective subclasses Objective (objectives/base.py): it maps a batch
    to (sum of losses, weight) like NextTokenObjective, and has batch_weight(batch), a micro-batch's weight
    known before the forward pass; its `last_terms` (floats) are added to each train_log.jsonl record. Its own
    parameters must be reachable from `model` (to be optimised and saved). Default: next-token loss on
    assistant replies.

    validator: what builds the validation train.eval_file / train.eval_every ask for (wants_validation), called
    once the model is set up as validator(cfg, model, tokenizer, world=meta's "world", log=log on process 0 else
    None); what it returns maps the model to {"val_accuracy", "val_loss", "val_turns", "val_seconds"} and has a
    `source`. The recipes pass mmdialog.eval.validation.Validator.build (eval sits above train, so the trainer
    does not import it). A config that asks for validation without a validator is an error."""
    run = _Run(cfg, model, tokenizer, dataset, Path(out_dir), log=log, meta=meta, dist=dist or Dist(),
               objective=objective, collate=collate, validator=validator)
    if resume:
        run.resume()
    run.start(progress)
    with _Stop() as stop:
        while run.schedule.step < run.plan.total_steps and run.schedule.progress() < 1.0:
            if not run.step(stop):
                break
    return run.finish()


@dataclass
class _Step:
    """One optimizer step's figures, gathered over the processes."""
    loss: float
    grad_norm: float
    tokens: int
    stop_requested: bool


class _Run:
    """train()'s state and its parts: set up (the optimizer, schedule and sampler over the model, resumed
    or fresh), one optimizer step, the logs and checkpoints, and the final model."""

    def __init__(self, cfg: Config, model: MultimodalLM, tokenizer: ChatTokenizer, dataset, out_dir: Path, *,
                 log, meta: dict | None, dist: Dist, objective: Objective | None, collate, validator):
        tc = self.tc = cfg.train
        self.cfg, self.model, self.tokenizer, self.dataset, self.out_dir = cfg, model, tokenizer, dataset, out_dir
        self.log, self.dist, self.build_validator = log, dist, validator
        if tc.num_threads:
            torch.set_num_threads(tc.num_threads)
        if tc.on_nan not in ("stop", "skip"):
            raise MMDialogError(f"train.on_nan must be stop or skip, got {tc.on_nan!r}")
        if tc.grad_accum < 1:
            raise MMDialogError(f"train.grad_accum must be at least 1, got {tc.grad_accum}")
        device = resolve_device(tc.device)
        if dist.enabled and device.type == "cuda":
            device = torch.device("cuda", dist.local_rank)
        self.device = device
        self.precision = resolve_precision(tc.precision, device.type)  # once: it reads /proc/cpuinfo
        # auto on a CPU with native bf16: time both on the first batch and keep the faster (one process only:
        # processes that chose differently would not match)
        self.time_auto = (tc.precision == "auto" and device.type == "cpu" and self.precision == "bf16"
                          and not dist.enabled)
        check_fsdp(tc, self.precision)
        self.fsdp = fsdp = dist.enabled and tc.distributed == "fsdp"
        self.sampler = StepSampler.for_dataset(dataset, tc, rank=dist.rank, world_size=dist.world_size)
        self.collate = collate or Collator(tokenizer.pad_id, pack=tc.pack, pack_length=tc.pack_length or
                                           model.decoder.max_seq_len, loss_turns=tc.loss_turns)
        if dist.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
        self.plan = plan = build_plan(model, tc)  # LoRA adapters are injected here
        if tc.grad_checkpointing:
            enable_gradient_checkpointing(model)
        model.to(device)
        if objective is not None and not isinstance(objective, Objective):
            raise MMDialogError(f"the objective must subclass mmdialog.objectives.base.Objective (the objective "
                                f"protocol); got {type(objective).__name__}")
        self.objective = objective if objective is not None else NextTokenObjective(model)
        self.template = None  # fsdp: process 0 gathers the full weights into this unsharded copy to save them
        if fsdp:
            plan.apply(model, 0)  # one stage (staged is refused): requires_grad is set before sharding
            self.template = meta_copy(model) if dist.is_main else None
            shard_fsdp(self.objective, model, dist, device)
        self.opt = make_optimizer(model, tc, names=plan.all_trainable)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")
        self.schedule = Schedule(plan, tc)
        self.ckpt_root = out_dir / "checkpoints"
        self.ckpt_meta = {**(meta or {}), "adapters": plan.adapters, "strategy": tc.strategy}
        self.world = (meta or {}).get("world")
        self.validates = wants_validation(tc, self.world)
        if self.validates and validator is None:
            raise MMDialogError("train.eval_file or train.eval_every asks for validation, and train() was given no "
                                "validator (pass validator=mmdialog.eval.validation.Validator.build)")
        self.tokens, self.ema, self.losses, self.skipped_batches, self.resumed_from = 0, None, [], 0, 0
        self.ddp, self.stage, self.stopped, self.consecutive_skips = None, None, "", 0
        self.validation: list[dict] = []

    def resume(self) -> None:
        latest = latest_training_checkpoint(self.ckpt_root)
        if latest is None:
            self.log(f"resume: no checkpoint in {self.ckpt_root}; starting from step 0")
            return
        self.resumed_from = _load_resume(latest, self.model, self.opt, self.scaler, self.schedule, self.sampler,
                                         self.dataset, self.dist, self.objective if self.fsdp else None)
        st = load_training_state(latest)
        self.tokens, self.ema, self.losses = st["tokens"], st["ema"], [tuple(x) for x in st["losses"]]
        self.skipped_batches = st["skipped_batches"]
        self.log(f"resumed from {latest} (step {self.resumed_from})")

    def start(self, progress: bool) -> None:
        """Log what trains on what, open the JSONL log and the progress bar, build the validator."""
        model, tc, dist = self.model, self.tc, self.dist
        n_trainable = sum(p.numel() for n, p in model.named_parameters() if n in self.plan.all_trainable)
        data = self.dataset.report() if hasattr(self.dataset, "report") else len(self.dataset)
        self.log(f"model: {count_parameters(model):,} parameters ({n_trainable:,} trained, strategy {tc.strategy}); "
                 f"data: {data}; precision: "
                 f"{'bf16 or fp32, timed on the first batch' if self.time_auto else self.precision} "
                 f"(train.precision={tc.precision}); device: {self.device}"
                 + (f"; {dist.world_size} processes ({tc.distributed})" if dist.enabled else ""))
        self.log_file = _open_log(self.out_dir / "train_log.jsonl", self.resumed_from) if dist.is_main else None
        self.t0 = time.perf_counter() - self.schedule.elapsed
        self.bar = tqdm(total=None if self.schedule.budget > 0 else self.plan.total_steps, initial=self.schedule.step,
                        desc="train", unit="step", disable=not progress or not dist.is_main, dynamic_ncols=True)
        self.validator = self.build_validator(self.cfg, model, self.tokenizer, world=self.world,
                                              log=self.log if dist.is_main else None) if self.validates else None

    def _enter_stage(self, s: int) -> None:
        """Which parameters train changed: DDP must be rebuilt over the new set."""
        model, plan, dist = self.model, self.plan, self.dist
        if not self.fsdp:
            plan.apply(model, s)
        self.stage = s
        if dist.enabled and not self.fsdp:
            from torch.nn.parallel import DistributedDataParallel as DDP

            # a modality absent from a batch leaves its encoder without gradients
            self.ddp = DDP(self.objective, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                           find_unused_parameters=len(model.encoders) > 1)
        if len(plan.stages) > 1 and dist.is_main:
            self.log(f"stage {s + 1}/{len(plan.stages)} from step {self.schedule.step}: "
                     f"{len(plan.stages[s].trainable)} parameter tensors train at lr {plan.stages[s].lr:g}")

    def _choose_precision(self, batch: dict) -> None:
        times, self.time_auto = time_precisions(self.objective, batch), False
        self.precision = "bf16" if times["bf16"] < 0.95 * times["fp32"] else "fp32"
        self.log(f"precision auto: one forward + backward takes {times['bf16'] * 1000:.0f} ms in bf16, "
                 f"{times['fp32'] * 1000:.0f} ms in fp32 on this CPU: training in {self.precision}")

    def _backward(self, batches: list[dict], stop) -> _Step:
        """Forward and backward over the step's micro-batches (the gradient of the whole batch's mean loss),
        then the loss, gradient norm, tokens and stop request gathered over the processes."""
        dist, device, ddp = self.dist, self.device, self.ddp
        weight = dist.all_reduce(torch.stack([self.objective.batch_weight(b) for b in batches]).sum().double()
                                 .reshape(1))
        norm = float(weight) / dist.world_size  # backward of sum / norm: DDP's mean over processes sums them
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        for i, b in enumerate(batches):
            sync = ddp is None or i == len(batches) - 1
            if self.fsdp:  # reduce-scatter the gradients on the last micro-batch only
                self.objective.set_requires_gradient_sync(i == len(batches) - 1)
            with (nullcontext() if sync else ddp.no_sync()), autocast_context(self.precision, device.type):
                part, _ = (ddp or self.objective)(b)
            self.scaler.scale(part / max(norm, 1e-12)).backward()
            loss_sum += part.detach().double()
        step_tokens = sum(int(b["attention_mask"].sum()) for b in batches)
        stats = dist.all_reduce(torch.stack([loss_sum, torch.tensor(float(stop.requested), dtype=torch.float64,
                                                                    device=device),
                                             torch.tensor(float(step_tokens), dtype=torch.float64, device=device)]))
        self.scaler.unscale_(self.opt)
        gnorm = full_tensor(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.tc.grad_clip))
        return _Step(float(stats[0]) / max(float(weight), 1e-12), float(gnorm), int(stats[2]), float(stats[1]) > 0)

    def step(self, stop) -> bool:
        """One optimizer step (or a skipped non-finite batch); False when the run must stop here."""
        s, _ = self.plan.stage_at(self.schedule.step)
        if s != self.stage:
            self._enter_stage(s)
        lr = self.schedule.lr()
        for group in self.opt.param_groups:
            group["lr"] = lr * group["lr_scale"]
        if hasattr(self.dataset, "set_epoch"):  # augmentation drawn anew each epoch, reproducibly
            self.dataset.set_epoch(self.sampler.epoch)
        indices = self.sampler.next()
        batches = [_to(self.collate([self.dataset[i] for i in mb]), self.device) for mb in indices]
        if self.time_auto:
            self._choose_precision(batches[0])
        st = self._backward(batches, stop)
        # With fp16 an overflowing gradient is the scaler's business (it skips the step and lowers the scale).
        if not math.isfinite(st.loss) or (not self.scaler.is_enabled() and not math.isfinite(st.grad_norm)):
            return self._skip(st, indices, lr)
        self.consecutive_skips = 0
        self.scaler.step(self.opt)
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)
        self.schedule.step += 1
        self.schedule.elapsed = time.perf_counter() - self.t0
        self.tokens += st.tokens
        self.ema = st.loss if self.ema is None else 0.9 * self.ema + 0.1 * st.loss
        self._report(st, lr)
        if st.stop_requested:
            self.stopped = "SIGTERM"
            self.save_resumable()
            return False
        if self.tc.save_every and self.schedule.step % self.tc.save_every == 0:
            self.save_resumable()
        return True

    def _skip(self, st: _Step, indices, lr: float) -> bool:
        """A non-finite loss or gradient: the weights stay as they were; stop (train.on_nan=stop, or too many
        in a row) or count the batch as skipped."""
        where = (f"step {self.schedule.step + 1}: loss {st.loss}, gradient norm {st.grad_norm} on batch "
                 f"[{_batch_ids(self.dataset, indices)}] (lr {lr:.2e})")
        self.opt.zero_grad(set_to_none=True)
        self.consecutive_skips += 1
        if self.tc.on_nan == "stop" or self.consecutive_skips > MAX_CONSECUTIVE_SKIPS:
            self.bar.close()
            if self.log_file:
                self.log_file.close()
            raise MMDialogError(f"non-finite loss or gradient at {where}; the weights were not updated. "
                                + ("Lower train.lr, or set train.on_nan=skip to skip such batches"
                                   if self.tc.on_nan == "stop" else f"{self.consecutive_skips} batches in a row"))
        self.skipped_batches += 1
        self.log(f"skipped a non-finite batch at {where}")
        if st.stop_requested:
            self.stopped = "SIGTERM"
            self.save_resumable()
            return False
        return True

    def _report(self, st: _Step, lr: float) -> None:
        """The JSONL log every log_every steps, the progress bar, and validation every eval_every steps."""
        step, elapsed, tc = self.schedule.step, self.schedule.elapsed, self.tc
        if (step % tc.log_every == 0 or step == 1) and self.dist.is_main:
            rec = {"step": step, "loss": st.loss, "loss_ema": self.ema, "lr": lr, "grad_norm": st.grad_norm,
                   "tokens": self.tokens, "elapsed": elapsed, "tokens_per_second": self.tokens / elapsed,
                   **self.objective.last_terms}
            self.log_file.write(json.dumps(rec) + "\n")
            self.log_file.flush()
            self.losses.append((step, st.loss))
        self.bar.update(1)
        postfix = {"loss": f"{self.ema:.3f}", "lr": f"{lr:.1e}", "tok/s": f"{self.tokens / elapsed:.0f}"}
        if self.schedule.budget > 0:
            postfix["left"] = f"{max(self.schedule.budget - elapsed, 0):.0f}s"
        if self.validator is not None and tc.eval_every and step % tc.eval_every == 0:
            self.validate()
        if self.validation:
            postfix["val"] = f"{self.validation[-1]['val_accuracy']:.3f}"
        self.bar.set_postfix(postfix)

    def validate(self) -> None:
        """The gold-history scorer on the held-out records: into the JSONL log, the bar and the result. Every
        process runs it (an FSDP model needs them all for a forward pass); process 0 writes it."""
        v = {"step": self.schedule.step, **self.validator(self.model)}
        self.validation.append(v)
        if self.log_file:
            self.log_file.write(json.dumps(v) + "\n")
            self.log_file.flush()

    def saveable(self):
        """The model to save: itself, or under fsdp (on process 0) the template holding the gathered weights.
        A collective under fsdp."""
        if not self.fsdp:
            return self.model
        full = full_state_dict(self.model, self.dist)
        return materialize(self.template, full) if self.dist.is_main else None

    def state(self) -> dict:
        return {"optimizer": full_optimizer_state(self.objective, self.opt) if self.fsdp else self.opt.state_dict(),
                "scheduler": self.schedule.state_dict(), "scaler": self.scaler.state_dict(),
                "sampler": self.sampler.state_dict(), "dataset": getattr(self.dataset, "state_dict", lambda: None)(),
                "rng": self.dist.gather(rng_state()), "tokens": self.tokens, "ema": self.ema, "losses": self.losses,
                "skipped_batches": self.skipped_batches, "world_size": self.dist.world_size,
                "distributed": "fsdp" if self.fsdp else "ddp"}

    def save_resumable(self) -> None:
        st, m = self.state(), self.saveable()  # collectives: every process takes part
        if self.dist.is_main:
            save_training_checkpoint(self.ckpt_root, self.schedule.step, m, self.tokenizer, self.cfg,
                                     {**self.ckpt_meta, "tokens": self.tokens}, st, self.tc.keep_last)
        self.dist.barrier()

    def finish(self) -> TrainResult:
        """The last validation, the final resumable state, and OUT/checkpoint (LoRA merged, adapters beside)."""
        schedule, model, dist, tc, stopped = self.schedule, self.model, self.dist, self.tc, self.stopped
        if self.validator is not None and not stopped and (not self.validation
                                                           or self.validation[-1]["step"] != schedule.step):
            self.validate()  # the end of the run
        if self.validation and dist.is_main:
            v = self.validation[-1]
            self.log(f"validation at step {v['step']}: accuracy {v['val_accuracy']:.3f} over {v['val_turns']} turns, "
                     f"loss {v['val_loss']:.4f} ({self.validator.source})")
        self.bar.close()
        if self.log_file:
            self.log_file.close()
        wall = schedule.elapsed
        if stopped:
            self.log(f"stopped by {stopped} after step {schedule.step}; checkpoint in {self.ckpt_root}; "
                     f"continue with --resume")
        elif tc.save_every and schedule.step % tc.save_every and schedule.step > self.resumed_from:
            self.save_resumable()  # the final state, so that --resume of a finished run has nothing left to do
        sync = _check_in_sync(model, dist, self.fsdp)
        final = self.saveable()
        model.eval()
        adapters = None
        if self.plan.adapters == "lora" and not stopped:
            adapters = lora_state(model)  # kept beside the merged weights: `mmdialog export` writes them for peft
            merge_lora(model)  # deployment: plain weights, the names and shapes of the model without adapters
        if dist.is_main:
            final_meta = {**self.ckpt_meta, "adapters": self.plan.adapters if stopped else None,
                          "step": schedule.step, "tokens": self.tokens, **sync}
            save_checkpoint(self.out_dir / "checkpoint", final, self.tokenizer, self.cfg, final_meta,
                            extra=None if adapters is None else
                            lambda tmp: save_adapters(tmp / ADAPTERS, adapters, tc.lora))
        dist.barrier()
        return TrainResult(schedule.step, wall, self.tokens, self.tokens / max(wall, 1e-9),
                           self.ema if self.ema is not None else float("nan"), self.losses,
                           len(getattr(self.dataset, "skipped", [])), stopped, self.resumed_from,
                           self.skipped_batches, self.precision, self.validation)


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

