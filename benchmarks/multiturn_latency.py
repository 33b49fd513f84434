"""Per-turn latency of a 16-turn conversation with an image in turn 1 and another in turn 8.

For each turn: time to first token (TTFT) and decode tokens/s of
  (a) a ChatSession (cross-turn KV cache, media cache): prefills only the new turn;
  (b) re-encoding the whole conversation each turn with the same model (a fresh session each turn,
      images encoded again: what LLaVA's CLI and most stacks do);
  (c) Hugging Face `generate` on a LlamaForCausalLM built from config with the same sizes, given the
      whole conversation's input embeddings (images encoded and fused by our model) each turn.
Prints the ratios (b)/(a) and (c)/(a) at turns 1, 8 and 16, and whether (a) and (b) agree token for token.

Usage: python benchmarks/multiturn_latency.py [--checkpoint CKPT] [--device cpu|cuda] [--threads N]
       [KEY=VALUE model overrides, e.g. model.decoder.dim=512 model.decoder.depth=8]
Without a checkpoint: the demo-sized model (configs/demo.yaml) with random weights; timings do not depend on them.
Random weights rarely produce <|end|>, so every reply runs to --max-new-tokens: the decode rates are comparable.
Random weights also reply with byte soup that re-tokenises differently, which a trained model's replies do not;
so without a checkpoint the history holds short fixed answers (--history gold, as `mmdialog eval` does) and
each reply is generated but not kept. --history own keeps the model's own replies (the default with a checkpoint).
No asserts on time: the script prints figures.
"""

import argparse
import time

import numpy as np
import torch

from mmdialog.chat.sampling import SamplingParams
from mmdialog.chat.session import ChatSession
from mmdialog.config import load_config
from mmdialog.data.conversation import Image
from mmdialog.data.processor import Processor
from mmdialog.data.tokenizer import ChatTokenizer
from mmdialog.model import build_model

QUESTIONS = ["Describe the picture.", "How many red things are there?", "What colour is it?", "Is there a green triangle?",
             "What about blue ones?", "How many of them are large?", "Where is it?", "Look at this one now.",
             "How many red things are there?", "What colour is it?", "And the earlier red thing?", "Is it large?",
             "How many of them are small?", "What about the circle?", "Where is the square?", "Anything else?"]


def load(args):
    if args.checkpoint:
        from mmdialog.modelio import load_checkpoint

        ck = load_checkpoint(args.checkpoint, device=args.device)
        return ck.model, ck.processor, ck.config
    cfg = load_config("configs/demo.yaml", ["model.decoder.max_seq_len=2048", *args.overrides])
    tok = ChatTokenizer.train(QUESTIONS * 50 + ["There are 5 shapes.", "yes", "no", "red", "2"], 400)
    torch.manual_seed(0)
    model = build_model(cfg.model, vocab_size=tok.vocab_size, placeholder_ids=dict(tok.media_ids)).eval().to(args.device)
    proc = Processor(tok, image_size=cfg.model.image.image_size, image_tokens=model.num_media_tokens("image"),
                     max_length=cfg.model.decoder.max_seq_len)
    return model, proc, cfg


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


ANSWERS = ["There are 5 shapes.", "2", "red", "no", "yes", "1"]


def timed_reply(session: ChatSession, params, device, commit=True):
    """(ttft seconds, decode tokens/s, token ids) of one reply; the session's conversation must end with a user turn."""
    sync(device)
    t0 = time.perf_counter()
    stream = session.generate_stream(commit=commit, sampling=params)  # prefill, eagerly
    for _ in stream:
        pass
    sync(device)  # the sampled token's .item() already waited for the device: first_token_s is synchronous
    end = time.perf_counter()
    r = stream.reply
    ttft = r.first_token_s
    n = r.completion_tokens
    return ttft, (n - 1) / (end - t0 - ttft) if n > 1 else float("nan"), r.token_ids


def hf_llama(model, cfg, device):
    from transformers import LlamaConfig, LlamaForCausalLM

    d = model.decoder
    blk = d.blocks[0]
    hf = LlamaForCausalLM(LlamaConfig(
        vocab_size=d.tok_embeddings.num_embeddings, hidden_size=cfg.model.decoder.dim,
        intermediate_size=blk.mlp.out_proj.in_features, num_hidden_layers=len(d.blocks),
        num_attention_heads=blk.attn.heads, num_key_value_heads=blk.attn.kv_heads,
        max_position_embeddings=d.max_seq_len, rope_theta=cfg.model.decoder.rope_theta,
        rms_norm_eps=cfg.model.decoder.norm_eps, tie_word_embeddings=True, attn_implementation="sdpa"))
    return hf.eval().to(device)


@torch.no_grad()
def hf_turn(hf, model, proc, conv, new_tokens, device):
    """TTFT and tokens/s of HF generate given the whole conversation's embeddings (images encoded each turn)."""
    def run(n):
        sync(device)
        t0 = time.perf_counter()
        ex = proc(conv, add_generation_prompt=True)
        images = ex.images.to(device) if ex.images is not None else None
        embeds = model.embed(ex.input_ids[None].to(device), model.encode_media(images=images))  # (1, T, D)
        out = hf.generate(inputs_embeds=embeds, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
        sync(device)
        return time.perf_counter() - t0, out

    ttft, _ = run(1)
    total, out = run(new_tokens)
    return ttft, (new_tokens - 1) / max(total - ttft, 1e-9)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint")
    ap.add_argument("--turns", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--no-hf", action="store_true", help="skip (c)")
    ap.add_argument("--repeats", type=int, default=3, help="timings per turn and path; medians are printed")
    ap.add_argument("--history", choices=["gold", "own"], help="assistant turns kept in the history: fixed short "
                    "answers (default without a checkpoint) or the model's own replies (default with one)")
    ap.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, proc, cfg = load(args)
    own = (args.history or ("own" if args.checkpoint else "gold")) == "own"
    hf = None if args.no_hf else hf_llama(model, cfg, args.device)
    params = SamplingParams(max_new_tokens=args.max_new_tokens)
    size = proc.image_size
    rng = np.random.default_rng(0)
    images = {0: Image(pixels=rng.integers(0, 256, (size, size, 3), dtype=np.uint8)),
              7: Image(pixels=rng.integers(0, 256, (size, size, 3), dtype=np.uint8))}

    # warm-up (allocator, kernels, lazy imports): one throwaway turn on each path
    w = ChatSession(model, proc, sampling=params)
    w.add("user", images[0], QUESTIONS[0])
    timed_reply(w, params, args.device)
    w.media_cache.clear()
    if hf is not None:
        hf_turn(hf, model, proc, w.conv.prefix(1), 2, args.device)

    cached = ChatSession(model, proc, sampling=params)
    rows, same = [], True
    for t in range(args.turns):
        parts = [images[t], QUESTIONS[t % len(QUESTIONS)]] if t in images else [QUESTIONS[t % len(QUESTIONS)]]
        cached.add("user", *parts)
        b, a, c = [], [], []
        for _ in range(args.repeats):  # medians: the machine may be shared
            fresh = ChatSession(model, proc, sampling=params)  # (b): nothing kept from earlier turns
            fresh.conv = cached.conv.prefix(len(cached.conv.turns))
            b.append(timed_reply(fresh, params, args.device, commit=False))
            fork = cached.fork()  # the same KV cache state, and the media cache as it was before this turn
            fork.media_cache = dict(cached.media_cache)
            a.append(timed_reply(fork, params, args.device, commit=False))
            if hf is not None:
                c.append(hf_turn(hf, model, proc, fresh.conv, args.max_new_tokens, args.device))
        a_ids = timed_reply(cached, params, args.device, commit=own)[2]
        if not own:
            cached.add("assistant", ANSWERS[t % len(ANSWERS)])
        same &= a_ids == b[0][2]
        med = lambda runs, i: float(np.median([r[i] for r in runs])) if runs else float("nan")  # noqa: E731
        a_ttft, a_rate, b_ttft, b_rate = med(a, 0), med(a, 1), med(b, 0), med(b, 1)
        c_ttft, c_rate = med(c, 0), med(c, 1)
        rows.append((t + 1, cached.last.prompt_tokens, cached.last.prompt_tokens - cached.last.cached_tokens,
                     a_ttft, a_rate, b_ttft, b_rate, c_ttft, c_rate))

    dev = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    params_n = sum(p.numel() for p in model.parameters())
    print(f"model: {params_n:,} parameters, decoder dim {cfg.model.decoder.dim} x {cfg.model.decoder.depth} layers; "
          f"{proc.image_tokens} tokens per image; device: {dev}; history: {'own replies' if own else 'fixed answers'}")
    print(f"{'turn':>4} {'context':>7} {'prefill':>7} | {'(a) ttft ms':>11} {'tok/s':>7} | {'(b) ttft ms':>11} {'tok/s':>7} "
          f"| {'(c) ttft ms':>11} {'tok/s':>7}")
    for r in rows:
        print(f"{r[0]:>4} {r[1]:>7} {r[2]:>7} | {r[3] * 1e3:>11.2f} {r[4]:>7.0f} | {r[5] * 1e3:>11.2f} {r[6]:>7.0f} "
              f"| {r[7] * 1e3:>11.2f} {r[8]:>7.0f}")
    print()
    for t in sorted({1, min(8, args.turns), args.turns}):
        r = rows[t - 1]
        print(f"turn {t:>2}: ttft (b)/(a) = {r[5] / r[3]:6.2f}x, (c)/(a) = {r[7] / r[3]:6.2f}x")
    print(f"turn {args.turns} ttft / turn 1 ttft for (a): {rows[-1][3] / rows[0][3]:.2f} (target <= 1.5); "
          f"(b)/(a) at turn {args.turns}: {rows[-1][5] / rows[-1][3]:.1f}x (target >= 10)")
    print(f"greedy replies of (a) and (b) token-for-token identical on all {args.turns} turns: {same}")


if __name__ == "__main__":
    with torch.no_grad():
        main()
