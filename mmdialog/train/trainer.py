"""The training loop: AdamW, warmup + cosine, gradient clipping, bf16 autocast, progress, JSONL logs, checkpoints."""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from mmdialog.config import Config, TrainConfig
from mmdialog.data.collate import Collator
from mmdialog.data.dataset import ConversationDataset
from mmdialog.data.formats import DataFile
from mmdialog.data.processor import Processor
from mmdialog.data.tokenizer import ChatTokenizer
from mmdialog.data.worlds.shapes import load_split, record_to_conversation
from mmdialog.model import MultimodalLM, build_model, count_parameters
from mmdialog.train.checkpoint import save_checkpoint


@dataclass
class TrainResult:
    steps: int
    wall_seconds: float
    tokens: int
    tokens_per_second: float
    final_loss: float
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, loss)
    skipped: int = 0


def world_texts(records: list[dict]) -> list[str]:
    return [t for r in records for rd in r["rounds"] for t in (rd["question"], rd["answer"])]


def lr_factor(step: int, progress: float, cfg: TrainConfig) -> float:
    """Linear warmup over steps, then cosine down to min_lr_ratio over the run's progress in [0, 1]."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
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


def resolve_precision(precision: str) -> str:
    if precision == "auto":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    return precision


def autocast_context(precision: str):
    precision = resolve_precision(precision)
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    if precision == "fp32":
        return nullcontext()
    raise ValueError(f"train.precision must be auto, bf16 or fp32, got {precision!r}")


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not norms, biases), and the media encoders at
    lr * encoder_lr_scale: trained from scratch at the decoder's rate, the image encoder collapses to
    the same output for every image within a few hundred steps, and the decoder then ignores images."""
    groups = []
    for is_encoder in (False, True):
        params = [(n, p) for n, p in model.named_parameters() if p.requires_grad and n.startswith("encoders.") == is_encoder]
        scale = cfg.encoder_lr_scale if is_encoder else 1.0
        groups.append({"params": [p for _, p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay, "lr_scale": scale})
        groups.append({"params": [p for _, p in params if p.dim() < 2], "weight_decay": 0.0, "lr_scale": scale})
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=cfg.betas)


def prepare(cfg: Config, world_dir: Path | None, progress: bool = True):
    """The tokenizer, the model, and the processed training set: the records of cfg.data.train_file when
    set (invalid ones land in dataset.skipped with their line and reason), else the world's train split.
    The tokenizer is cfg.data.tokenizer when set, else trained on the training text."""
    if cfg.data.train_file:
        data = DataFile(cfg.data.train_file, cfg.data.format, media_root=cfg.data.media_root or None)
        texts = data.texts()  # streamed: the file is read once for the tokenizer, once for the examples
    else:
        train_records = load_split(world_dir, "train")
        texts = world_texts(train_records) + ["Describe the picture."]
    tokenizer = ChatTokenizer.load(cfg.data.tokenizer) if cfg.data.tokenizer else \
        ChatTokenizer.train(texts, cfg.tokenizer.vocab_size)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, vocab_size=tokenizer.vocab_size, placeholder_ids=dict(tokenizer.media_ids))
    processor = Processor.for_model(tokenizer, model, max_length=cfg.model.decoder.max_seq_len)
    if cfg.data.train_file:
        dataset = data.dataset(processor, modalities=model.encoders.keys(), progress=progress)
    else:
        convs = [record_to_conversation(r, world_dir) for r in train_records]
        dataset = ConversationDataset.build(convs, processor, desc="processing train", progress=progress)
    return tokenizer, model, processor, dataset


def train(cfg: Config, model: MultimodalLM, tokenizer: ChatTokenizer, dataset: ConversationDataset, out_dir: Path,
          *, progress: bool = True, log=print, meta: dict | None = None) -> TrainResult:
    tc = cfg.train
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    if len(dataset) < tc.batch_size:
        raise ValueError(f"the training set has {len(dataset)} conversations, fewer than train.batch_size={tc.batch_size}")
    out_dir.mkdir(parents=True, exist_ok=True)
    precision = resolve_precision(tc.precision)  # once: it reads /proc/cpuinfo
    log(f"model: {count_parameters(model):,} parameters; data: {dataset.report()}; "
        f"precision: {precision} (train.precision={tc.precision})")
    g = torch.Generator().manual_seed(tc.seed)
    loader = DataLoader(dataset, batch_size=tc.batch_size, shuffle=True, drop_last=True,
                        collate_fn=Collator(tokenizer.pad_id), generator=g)
    opt = make_optimizer(model, tc)
    budget = tc.max_minutes * 60.0
    model.train()
    log_file = open(out_dir / "train_log.jsonl", "w")
    t0 = time.perf_counter()
    tokens, step, losses, ema = 0, 0, [], None
    # With a wall-clock budget the step count is not known ahead: the bar counts steps and shows the time left.
    bar = tqdm(total=None if budget > 0 else tc.max_steps, desc="train", unit="step", disable=not progress,
               dynamic_ncols=True)
    done = False
    while not done:
        for batch in loader:
            elapsed = time.perf_counter() - t0
            prog = step / tc.max_steps
            if budget > 0:
                prog = max(prog, elapsed / budget)
            if prog >= 1.0:
                done = True
                break
            lr = tc.lr * lr_factor(step, prog, tc)
            for group in opt.param_groups:
                group["lr"] = lr * group["lr_scale"]
            with autocast_context(precision):
                out = model(**batch)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            opt.step()
            step += 1
            tokens += int(batch["attention_mask"].sum())
            loss = out.loss.item()
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss became {loss} at step {step} (lr {lr:.2e}); lower train.lr")
            ema = loss if ema is None else 0.9 * ema + 0.1 * loss
            if step % tc.log_every == 0 or step == 1:
                elapsed = time.perf_counter() - t0
                rec = {"step": step, "loss": loss, "loss_ema": ema, "lr": lr, "grad_norm": float(gnorm),
                       "tokens": tokens, "elapsed": elapsed, "tokens_per_second": tokens / elapsed}
                log_file.write(json.dumps(rec) + "\n")
                log_file.flush()
                losses.append((step, loss))
            bar.update(1)
            now = time.perf_counter() - t0
            postfix = {"loss": f"{ema:.3f}", "lr": f"{lr:.1e}", "tok/s": f"{tokens / now:.0f}"}
            if budget > 0:
                postfix["left"] = f"{max(budget - now, 0):.0f}s"
            bar.set_postfix(postfix)
            if tc.save_every and step % tc.save_every == 0:
                save_checkpoint(out_dir / "checkpoint", model, tokenizer, cfg, {**(meta or {}), "step": step})
    bar.close()
    log_file.close()
    wall = time.perf_counter() - t0
    model.eval()
    save_checkpoint(out_dir / "checkpoint", model, tokenizer, cfg, {**(meta or {}), "step": step, "tokens": tokens})
    return TrainResult(step, wall, tokens, tokens / max(wall, 1e-9), ema if ema is not None else float("nan"),
                       losses, len(dataset.skipped))
