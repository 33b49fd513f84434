"""Per-turn latency of a chat session with the cross-turn KV cache vs re-encoding the whole conversation.

Usage: python benchmarks/chat_cache.py [--checkpoint runs/demo/checkpoint] [--turns 24] [--policy last_k:4]
Without a checkpoint it builds the demo-sized model with random weights (timing does not depend on them).
Prints the latency of turns 1, N/2 and N for both, and the speed-up ratio at turn N. With a context policy
the baseline re-encodes the truncated conversation (what the policy lets the model see), and the
figures show what a policy's cut costs: the cache is kept up to the first token that changed.
"""

import argparse
import time

import numpy as np
import torch

from mmdialog.chat.policies import parse_policy
from mmdialog.chat.session import ChatSession
from mmdialog.config import load_config
from mmdialog.data.conversation import Image
from mmdialog.data.processor import Processor
from mmdialog.data.tokenizer import ChatTokenizer
from mmdialog.model import build_model

QUESTIONS = ["How many red things are there?", "What colour is it?", "Is there a green triangle?",
             "What about blue ones?", "How many of them are large?", "Where is it?"]


def load(args):
    if args.checkpoint:
        from mmdialog.modelio import load_checkpoint

        ck = load_checkpoint(args.checkpoint)
        return ck.model, ck.processor
    cfg = load_config("configs/demo.yaml", ["model.decoder.max_seq_len=4096"])
    tok = ChatTokenizer.train(QUESTIONS * 50 + ["Describe the picture.", "yes", "no", "red", "2"], 300)
    model = build_model(cfg.model, vocab_size=tok.vocab_size, placeholder_ids=dict(tok.media_ids)).eval()
    return model, Processor(tok, image_size=cfg.model.image.image_size, image_tokens=model.num_media_tokens("image"),
                            max_length=4096)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint")
    ap.add_argument("--turns", type=int, default=24)
    ap.add_argument("--max-new-tokens", type=int, default=4)
    ap.add_argument("--policy", default="full", help="full, last_k:K[:STEP], token_budget:TOKENS, summary:KEEP[:STEP]")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, proc = load(args)
    size = proc.image_size
    rng = np.random.default_rng(0)
    cached = ChatSession(model, proc, max_new_tokens=args.max_new_tokens, policy=parse_policy(args.policy))
    times = {"cached": [], "re-encode": []}
    for t in range(args.turns):
        parts = [Image(pixels=rng.integers(0, 256, (size, size, 3), dtype=np.uint8))] if t % 6 == 0 else []
        parts.append(QUESTIONS[t % len(QUESTIONS)])
        cached.add("user", *parts)
        # Baseline: what most stacks do each turn: a fresh session encodes everything, images included.
        fresh = ChatSession(model, proc, max_new_tokens=args.max_new_tokens)
        fresh.conv = cached.context()  # what the policy lets the model see this turn
        t0 = time.perf_counter()
        ref = fresh.generate(commit=False)
        times["re-encode"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        reply = cached.generate()
        times["cached"].append(time.perf_counter() - t0)
        assert reply == ref, f"turn {t}: cached {reply!r} != re-encoded {ref!r}"
    n = args.turns
    print(f"policy {cached.policy.describe()}: context at turn {n}: {cached.last.prompt_tokens} tokens "
          f"({len(cached.conv.turns)} turns kept in the session); prefilled {cached.stats['prefill_tokens']} tokens "
          f"over {n} turns, reused {cached.stats['reused_tokens']}; replies identical on all {n} turns")
    for name, ts in times.items():
        print(f"{name:>10}: turn 1 {ts[0] * 1e3:6.1f} ms, turn {n // 2} {ts[n // 2 - 1] * 1e3:6.1f} ms, turn {n} {ts[-1] * 1e3:6.1f} ms")
    print(f"speed-up at turn {n}: {times['re-encode'][-1] / times['cached'][-1]:.2f}x; "
          f"mean over turns {n // 2}..{n}: {np.mean(times['re-encode'][n // 2:]) / np.mean(times['cached'][n // 2:]):.2f}x")


if __name__ == "__main__":
    with torch.no_grad():
        main()
