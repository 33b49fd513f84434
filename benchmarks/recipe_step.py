"""One training step of a real-backbone recipe (configs/recipes/) at real size, with random weights: peak memory
and tokens/s per stage. Meant for a GPU; nothing is downloaded: the backbones are built from their published
architecture hyperparameters (below) instead of the recipe's directories.

Usage:
    python benchmarks/recipe_step.py                                        # SigLIP-B/16 + SmolLM2-360M, stages 1 and 2
    python benchmarks/recipe_step.py --recipe configs/recipes/siglip_qwen2.5_0.5b.yaml --batch 16 --seq 1024
    torchrun is not needed: this measures one process on one device.
    python benchmarks/recipe_step.py --tiny                                 # the same code path on CPU, in seconds

Each stage trains what the recipe's stage trains (stage 1: the connector; stage 2: connector + LM, or connector
+ LoRA adapters), with the recipe's precision and gradient checkpointing, on --batch conversations of --seq tokens
(one image each, its placeholder expanded to the tower's tokens; the second half of the text is supervised).
Prints parameters, ms/step, tokens/s and peak memory (CUDA: max allocated and reserved; CPU: the process's peak RSS).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch
import yaml

from mmdialog.config import load_config
from mmdialog.model import build_model, count_parameters
from mmdialog.objectives.lm import NextTokenObjective
from mmdialog.train.strategies import build_plan, enable_gradient_checkpointing
from mmdialog.train.trainer import autocast_context, make_optimizer, resolve_device, resolve_precision

ROOT = Path(__file__).resolve().parents[1]
ADDED_TOKENS = 9  # mmdialog's special tokens, added after the LM's vocabulary (data/tokenizer.py)

# Published architecture hyperparameters (the config.json of each model), so nothing needs downloading.
BACKBONES = {
    "siglip-base-patch16-224": {"model_type": "siglip_vision_model", "hidden_size": 768, "intermediate_size": 3072,
                                "num_hidden_layers": 12, "num_attention_heads": 12, "image_size": 224, "patch_size": 16},
    "clip-vit-large-patch14-336": {"model_type": "clip_vision_model", "hidden_size": 1024, "intermediate_size": 4096,
                                   "num_hidden_layers": 24, "num_attention_heads": 16, "image_size": 336,
                                   "patch_size": 14, "projection_dim": 768},
    "SmolLM2-360M-Instruct": {"model_type": "llama", "vocab_size": 49152, "hidden_size": 960, "intermediate_size": 2560,
                              "num_hidden_layers": 32, "num_attention_heads": 15, "num_key_value_heads": 5,
                              "max_position_embeddings": 8192, "rope_theta": 100000.0, "rms_norm_eps": 1e-5,
                              "tie_word_embeddings": True},
    "Qwen2.5-0.5B-Instruct": {"model_type": "qwen2", "vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864,
                              "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
                              "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
                              "tie_word_embeddings": True},
    # --tiny: the same families, a few thousand parameters
    "tiny-siglip": {"model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64,
                    "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
    "tiny-llama": {"model_type": "llama", "vocab_size": 320, "hidden_size": 32, "intermediate_size": 64,
                   "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                   "max_position_embeddings": 1024, "tie_word_embeddings": True},
    "tiny-qwen2": {"model_type": "qwen2", "vocab_size": 320, "hidden_size": 32, "intermediate_size": 64,
                   "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                   "max_position_embeddings": 1024, "tie_word_embeddings": True},
}


def backbone_names(cfg, tiny: bool) -> tuple[str, str]:
    """The vision tower and LM a recipe names (the last part of their paths), or tiny ones of the same families."""
    vision = Path(cfg.model.encoders["image"]["path"]).name
    lm = Path(cfg.model.decoder.path).name
    if tiny:
        return "tiny-siglip", "tiny-qwen2" if BACKBONES[lm]["model_type"] == "qwen2" else "tiny-llama"
    return vision, lm


def flow(value) -> str:
    """A mapping as a one-line YAML override (YAML's own float syntax: 1.0e-05, not JSON's 1e-05, a string in YAML)."""
    return yaml.safe_dump(value, default_flow_style=True, width=1 << 20).strip()


def build(recipe: Path, tiny: bool, overrides: list[str]):
    """The recipe's model with the backbones built from BACKBONES (random weights) instead of loaded."""
    cfg = load_config(recipe, overrides)
    vision, lm = backbone_names(cfg, tiny)
    image = {**cfg.model.encoders["image"], "hf_config": BACKBONES[vision]}
    image.pop("path")
    cfg = load_config(recipe, [*overrides, f"model.encoders.image={flow(image)}", "model.decoder.path=",
                               f"model.decoder.hf_config={flow(BACKBONES[lm])}"])
    vocab = BACKBONES[lm]["vocab_size"] + ADDED_TOKENS
    placeholder = BACKBONES[lm]["vocab_size"] + 6  # <|image|>, as ChatTokenizer.load adds it
    model = build_model(cfg.model, vocab_size=vocab, placeholder_ids={"image": placeholder})
    return cfg, model, vision, lm, vocab, placeholder


def make_batch(model, batch: int, seq: int, vocab: int, placeholder: int, device) -> dict[str, torch.Tensor]:
    n_img = model.num_media_tokens("image")
    if seq < n_img + 8:
        raise SystemExit(f"--seq {seq} leaves no room for text beside the image's {n_img} tokens")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab - ADDED_TOKENS, (batch, seq), generator=g)
    ids[:, 1:1 + n_img] = placeholder
    labels = torch.full_like(ids, -100)
    start = 1 + n_img + (seq - 1 - n_img) // 2
    labels[:, start:] = ids[:, start:]
    size = model.encoders["image"].image_size
    images = torch.rand(batch, 3, size, size, generator=g) * 2 - 1
    out = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels, "images": images}
    return {k: v.to(device) for k, v in out.items()}


def run_stage(cfg, model, stage: int, batch: dict, steps: int, device, precision: str) -> dict:
    plan = build_plan(model, cfg.train) if not hasattr(model, "_plan") else model._plan
    model._plan = plan  # LoRA adapters are injected once
    plan.apply(model, stage)
    names = plan.stages[stage].trainable
    opt = make_optimizer(model, cfg.train, names=names)
    objective = NextTokenObjective(model)
    trained = sum(p.numel() for n, p in model.named_parameters() if n in names)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps + 1):  # the first step warms up (allocations, kernels) and is not timed
        t = time.perf_counter()
        with autocast_context(precision, device.type):
            loss_sum, weight = objective(batch)
        (loss_sum / weight).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    sec = sum(times[1:]) / steps
    tokens = batch["input_ids"].numel()
    out = {"stage": stage + 1, "trainable": trained, "ms_per_step": sec * 1000, "tokens_per_s": tokens / sec,
           "conversations_per_s": batch["input_ids"].shape[0] / sec, "loss": float(loss_sum.detach() / weight)}
    if device.type == "cuda":
        out["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
        out["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
    else:
        out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    del opt
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default=str(ROOT / "configs" / "recipes" / "siglip_smollm2.yaml"))
    ap.add_argument("--tiny", action="store_true", help="tiny backbones of the same families (runs on CPU in seconds)")
    ap.add_argument("--batch", type=int, default=0, help="conversations per step (default 16, --tiny 4)")
    ap.add_argument("--seq", type=int, default=0, help="tokens per conversation, image included (default 512, --tiny 64)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per stage (after one warm-up step)")
    ap.add_argument("--stages", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. train.precision=fp32 train.grad_checkpointing=false")
    a = ap.parse_args()
    batch_n, seq = a.batch or (4 if a.tiny else 16), a.seq or (64 if a.tiny else 512)
    torch.manual_seed(0)
    cfg, model, vision, lm, vocab, placeholder = build(Path(a.recipe), a.tiny, a.overrides)
    device = resolve_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, device.type)
    if cfg.train.grad_checkpointing:
        enable_gradient_checkpointing(model)
    model.to(device).train()
    batch = make_batch(model, batch_n, seq, vocab, placeholder, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{Path(a.recipe).name}: {vision} + {lm}, {count_parameters(model):,} parameters, "
          f"{model.num_media_tokens('image')} image tokens; batch {batch_n} x {seq} tokens; precision {precision}; "
          f"gradient checkpointing {cfg.train.grad_checkpointing}; {name}")
    results = []
    for s in a.stages:
        r = run_stage(cfg, model, s - 1, batch, a.steps, device, precision)
        mem = (f"peak {r['peak_allocated_gib']:.2f} GiB allocated, {r['peak_reserved_gib']:.2f} GiB reserved"
               if "peak_allocated_gib" in r else f"peak RSS {r['peak_rss_gib']:.2f} GiB")
        print(f"stage {r['stage']}: {r['trainable']:,} trained; {r['ms_per_step']:.0f} ms/step, "
              f"{r['tokens_per_s']:,.0f} tokens/s, {r['conversations_per_s']:.1f} conversations/s; {mem}")
        results.append(r)
    if a.json:
        Path(a.json).write_text(json.dumps({"recipe": a.recipe, "vision": vision, "lm": lm, "batch": batch_n, "seq": seq,
                                            "precision": precision, "device": name,
                                            "parameters": count_parameters(model), "stages": results}, indent=2))


if __name__ == "__main__":
    main()
