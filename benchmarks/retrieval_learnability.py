"""How fast does the demo-sized decoder learn to look things up in its context? Synthetic tasks, no world.

Why this exists: the demo model stays near the answer priors on the shapes world (issue 2), even when the
image encoder is replaced by oracle one-hot features of every cell. This script separates the decoder's
side of that from everything else. Each task trains mmdialog's own CausalDecoder at the demo's size
(dim 128, depth 4, heads 4) from scratch on freshly drawn batches and prints held-out accuracy every
--every steps, next to the accuracy of always giving the most common answer (the prior):

  copy        a colour token, 5 random tokens, then the answer slot: repeat the colour (position lookup)
  exist1      3 colour tokens, "is" + a colour: is it among them? (content lookup, one attribute)
  exist1-text16 the scenes below as 16 text tokens (each cell its object's colour, or an 'empty' token),
              "is there a <colour> ?": one attribute, looked up among 16 word tokens
  exist1-img  the same question over the 16 projected oracle image tokens
  exist1-words the same, each image token the sum of the embeddings of its cell's colour and shape words
              (a connector whose output already lives in the word-embedding space)
  exist2-img  16 "image" tokens, each an oracle one-hot of (colour, shape, row, col) through a
              Linear-GELU-Linear projector as concat fusion does, 3-7 of them objects; then
              "is there a <colour> <shape> ?": content lookup of a conjunction, the world's exist question
  exist2-text the same scenes written as text (colour shape ; per object) before the question
  exist2-qfirst the question before the image tokens, so every image token can see it

Usage: python benchmarks/retrieval_learnability.py [--tasks copy,exist1,exist2-img] [--steps 800]
                                                   [--every 100] [--batch 64] [--lr 2e-3] [--threads 1]
"""

from __future__ import annotations

import argparse
import random
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmdialog.decoders.causal import CausalDecoder

COLOURS, SHAPES = range(0, 6), range(6, 9)
IS, THERE, A, QMARK, ANSWER, YES, NO, IMAGE, PAD, SEP = 9, 10, 11, 12, 13, 14, 15, 16, 17, 18
FILLER = range(20, 64)
VOCAB = 64
TASKS = ("copy", "exist1", "exist1-text16", "exist1-img", "exist1-words", "exist2-img", "exist2-text", "exist2-qfirst")


class Task:
    """Draws (features (B, 16, 17) or None, ids (B, T), answers (B,)) and embeds them for the decoder."""

    def __init__(self, name: str, rng: random.Random, decoder: CausalDecoder, projector: nn.Module):
        self.name, self.rng, self.decoder, self.projector = name, rng, decoder, projector

    def scene(self):
        rng = self.rng
        cells = rng.sample(range(16), rng.randint(3, 7))
        feats = torch.zeros(16, 17)  # 0-5 colour, 6-8 shape, 9-12 row, 13-16 col
        for c in range(16):
            feats[c, 9 + c // 4] = feats[c, 13 + c % 4] = 1
        objects = []
        for c in cells:
            colour, shape = rng.choice(COLOURS), rng.choice(SHAPES)
            objects.append((colour, shape))
            feats[c, colour] = feats[c, shape] = 1
        asked = rng.choice(objects) if rng.random() < 0.5 else (rng.choice(COLOURS), rng.choice(SHAPES))
        return feats, objects, asked, YES if asked in objects else NO

    def sample(self):
        rng = self.rng
        if self.name == "copy":
            c = rng.choice(COLOURS)
            return None, [c] + [rng.choice(FILLER) for _ in range(5)] + [ANSWER], c
        if self.name == "exist1":
            cols, q = [rng.choice(COLOURS) for _ in range(3)], rng.choice(COLOURS)
            return None, cols + [IS, q, ANSWER], YES if q in cols else NO
        feats, objects, (colour, shape), answer = self.scene()
        if self.name in ("exist1-img", "exist1-words", "exist1-text16"):
            colour = rng.choice(COLOURS)
            answer = YES if any(o[0] == colour for o in objects) else NO
            question = [IS, THERE, A, colour, QMARK, ANSWER]
            if self.name == "exist1-text16":  # every cell one token: its object's colour, or SEP when empty
                return None, [int(f[:6].argmax()) if f[:6].any() else SEP for f in feats] + question, answer
            return feats, [IMAGE] * 16 + question, answer
        question = [IS, THERE, A, colour, shape, QMARK]
        if self.name == "exist2-img":
            return feats, [IMAGE] * 16 + question + [ANSWER], answer
        if self.name == "exist2-qfirst":
            return feats, question + [IMAGE] * 16 + [ANSWER], answer
        return None, [t for o in objects for t in (*o, SEP)] + question + [ANSWER], answer

    def batch(self, size: int):
        feats, ids, answers = zip(*(self.sample() for _ in range(size)))
        width = max(len(i) for i in ids)
        ids = torch.tensor([[PAD] * (width - len(i)) + i for i in ids])  # left-padded: the answer slot is last
        feats = torch.stack(feats) if feats[0] is not None else None
        return feats, ids, torch.tensor(answers)

    def logits(self, feats, ids) -> torch.Tensor:
        x = self.decoder.embed(ids)  # (B, T, D)
        if feats is not None:
            if self.name == "exist1-words":  # word-aligned: each cell is the sum of its words' embeddings
                words = feats[..., :9]  # (B, 16, 9) colour and shape one-hots
                empty = 1 - words.sum(-1, keepdim=True).clamp(max=1)
                table = self.decoder.tok_embeddings.weight  # (V, D)
                tokens = words @ table[:9] + empty * table[SEP]
            else:  # concat fusion: projected features fill the image slots
                tokens = self.projector(feats)
            x = x.masked_scatter((ids == IMAGE).unsqueeze(-1), tokens.reshape(-1, x.shape[-1]))
        return self.decoder.logits(self.decoder(x)[:, -1])  # (B, V) at the answer slot


def run(name: str, args) -> list[tuple[int, float, float]]:
    torch.manual_seed(args.seed)
    decoder = CausalDecoder(vocab_size=VOCAB, dim=128, depth=4, heads=4, kv_heads=0, mlp_hidden=0, max_seq_len=64,
                            rope_theta=10000.0, norm_eps=1e-5, dropout=0.0, tie_embeddings=False)
    projector = nn.Sequential(nn.Linear(17, 128), nn.GELU(), nn.Linear(128, 128))
    params = [*decoder.parameters(), *projector.parameters()]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    task = Task(name, random.Random(args.seed), decoder, projector)
    held_out = Task(name, random.Random(args.seed + 1), decoder, projector).batch(1024)
    prior = max((held_out[2] == a).float().mean().item() for a in held_out[2].unique())
    rows, t0 = [], time.time()
    for step in range(1, args.steps + 1):
        for g in opt.param_groups:
            g["lr"] = args.lr * min(1.0, step / 30)
        feats, ids, answers = task.batch(args.batch)
        loss = F.cross_entropy(task.logits(feats, ids), answers)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % args.every == 0:
            with torch.no_grad():
                acc = (task.logits(*held_out[:2]).argmax(-1) == held_out[2]).float().mean().item()
            rows.append((step, acc, prior))
            print(f"{name:14s} step {step:5d}  loss {loss.item():.3f}  accuracy {acc:.3f}  prior {prior:.3f}  "
                  f"({time.time() - t0:.0f} s)", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    summary = {}
    for name in args.tasks.split(","):
        if name not in TASKS:
            raise SystemExit(f"unknown task {name!r}; tasks: {', '.join(TASKS)}")
        summary[name] = run(name, args)
    print("\nfinal accuracy / prior (ratio over the prior):")
    for name, rows in summary.items():
        step, acc, prior = rows[-1]
        print(f"  {name:14s} {acc:.3f} / {prior:.3f}  ({acc / prior:.2f}x) after {step} steps of {args.batch}")


if __name__ == "__main__":
    main()
