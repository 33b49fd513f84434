"""Training tokens/s: mmdialog's own decoder vs Hugging Face LlamaForCausalLM of the same sizes, fp32 vs bf16
autocast, padded vs packed rows, and 1 vs 2 processes (torchrun, gloo), on the same world batches.

In-process part: the demo model (configs/demo.yaml: ViT + concat + decoder) and the same model with
`model.decoder.name=hf` and a Llama config of the same width, depth, heads, MLP width and RoPE theta. Each
trains the same --steps batches (one more warms up) from the same initial weights, alternately, --repeats
times; the fastest of each counts (the machine may be shared: the minimum is the least disturbed).
Tokens/s counts real tokens (padding excluded). The HF decoder takes no packed rows (mmdialog refuses it),
so its packed cells are empty.

Process part: `mmdialog train` for --ddp-steps steps with 1 process, then `torchrun --nproc_per_node=2`
with the same global batch (each process one thread), tokens/s from each run's train_log.jsonl.

Usage: python benchmarks/train_throughput.py [--dialogues 300] [--steps 6] [--batch 16] [--repeats 2]
                                             [--ddp-steps 30] [--no-ddp] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from mmdialog.config import load_config
from mmdialog.data.collate import Collator
from mmdialog.data.worlds.shapes import generate_world
from mmdialog.model import count_parameters
from mmdialog.train.sampler import StepSampler
from packing import measure  # the timing loop packing.py measures with (benchmarks/ is on sys.path)
from mmdialog.train.trainer import prepare

ROOT = Path(__file__).resolve().parent.parent


def hf_overrides(cfg) -> list[str]:
    """model.decoder overrides that make the demo's decoder a Llama of the same sizes."""
    d = cfg.model.decoder
    mlp = d.mlp_hidden or 32 * math.ceil(8 * d.dim / 3 / 32)  # as CausalDecoder rounds it
    return ["model.decoder.name=hf",
            f"model.decoder.hf_config={{model_type: llama, hidden_size: {d.dim}, intermediate_size: {mlp}, "
            f"num_hidden_layers: {d.depth}, num_attention_heads: {d.heads}, "
            f"num_key_value_heads: {d.kv_heads or d.heads}, "
            f"max_position_embeddings: {d.max_seq_len}, rope_theta: {d.rope_theta}, rms_norm_eps: {d.norm_eps:.1e}, "
            f"tie_word_embeddings: {str(d.tie_embeddings).lower()}}}"]


def in_process(args, world: Path) -> None:
    base = load_config(ROOT / "configs/demo.yaml", [f"world.dir={world}"])
    rows = []
    for name, overrides in (("own", []), ("hf_llama", hf_overrides(base))):
        cfg = load_config(ROOT / "configs/demo.yaml", [f"world.dir={world}", *overrides])
        tokenizer, model, processor, dataset = prepare(cfg, world, progress=False)
        sampler = StepSampler(len(dataset), args.batch, seed=0)
        steps = [sampler.next()[0] for _ in range(args.steps + 1)]
        layouts = {"padded": [Collator(tokenizer.pad_id)([dataset[i] for i in idx]) for idx in steps]}
        if name == "own":
            packer = Collator(tokenizer.pad_id, pack=True, pack_length=cfg.model.decoder.max_seq_len)
            layouts["packed"] = [packer([dataset[i] for i in idx]) for idx in steps]
        real = sum(int(b["attention_mask"].sum()) for b in layouts["padded"][1:])
        state = {k: v.clone() for k, v in model.state_dict().items()}
        best: dict[tuple[str, str], float] = {}
        for _ in range(args.repeats):
            for precision in ("fp32", "bf16"):
                for layout, batches in layouts.items():
                    model.load_state_dict(state)
                    s, _ = measure(model, batches, cfg.train, precision)
                    best[precision, layout] = min(best.get((precision, layout), s), s)
        print(f"{name}: {count_parameters(model):,} parameters")
        for (precision, layout), s in sorted(best.items()):
            rows.append((name, precision, layout, real / s))
    print(f"\n{'decoder':9s} {'precision':9s} {'layout':7s} {'tokens/s':>9s}")
    for r in rows:
        print(f"{r[0]:9s} {r[1]:9s} {r[2]:7s} {r[3]:9.0f}")
    tps = {(r[0], r[1], r[2]): r[3] for r in rows}
    print()
    for precision in ("fp32", "bf16"):
        own, hf = tps["own", precision, "padded"], tps["hf_llama", precision, "padded"]
        print(f"own / hf_llama, {precision}, padded: {own / hf:.2f}x")
        print(f"own packed / own padded, {precision}: {tps['own', precision, 'packed'] / own:.2f}x")
    for name in ("own", "hf_llama"):
        print(f"{name} bf16 / fp32, padded: {tps[name, 'bf16', 'padded'] / tps[name, 'fp32', 'padded']:.2f}x")


def processes(args, world: Path, tmp: Path) -> None:
    common = ["--config", str(ROOT / "configs/demo.yaml"), f"world.dir={world}", f"train.max_steps={args.ddp_steps}",
              "train.max_minutes=0", f"train.batch_size={args.batch}", "train.log_every=1", "train.precision=fp32"]
    runs = {
        "1 process": [sys.executable, "-m", "mmdialog", "train", "--out", str(tmp / "one"), *common],
        "2 processes": [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
                        "-m", "mmdialog", "train", "--out", str(tmp / "two"), *common],
    }
    results = {}
    for name, cmd in runs.items():
        env = dict(os.environ, OMP_NUM_THREADS="1" if name == "2 processes" else str(torch.get_num_threads()))
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode:
            print(f"{name}: failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
            return
        out = tmp / ("one" if name == "1 process" else "two")
        last = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines() if line.strip()][-1]
        results[name] = last["tokens_per_second"]
        print(f"{name}: {last['tokens_per_second']:.0f} tokens/s over {last['step']} steps (global batch {args.batch})")
    print(f"2 processes / 1 process: {results['2 processes'] / results['1 process']:.2f}x "
          f"(on {os.cpu_count()} cores: one thread each vs {torch.get_num_threads()} threads in one)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dialogues", type=int, default=300)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per measurement (one more warms up)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--ddp-steps", type=int, default=30)
    ap.add_argument("--no-ddp", action="store_true", help="skip the 1 vs 2 processes part")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        world = Path(tmp) / "world"
        generate_world(world, dialogues=args.dialogues, seed=0, image_size=64, progress=False)
        print(f"world: {args.dialogues} dialogues; batch {args.batch}; threads {torch.get_num_threads()}; "
              f"bf16 autocast on a CPU {'with' if 'avx512_bf16' in Path('/proc/cpuinfo').read_text() else 'without'} "
              f"native bf16")
        in_process(args, world)
        if not args.no_ddp:
            print()
            processes(args, world, Path(tmp))


if __name__ == "__main__":
    main()
