"""Load on a local `mmdialog serve`: N concurrent clients each holding a multi-turn conversation.

Each client resends its whole history every turn (as OpenAI clients do), with an image in its first
turn and streaming on every other turn. Prints p50/p95 latency per turn index, the share of prompt
tokens served from the cache, the error count (must be 0) and the server process's peak memory (VmHWM).

Usage: python benchmarks/serve_load.py [--checkpoint CKPT] [--clients 16] [--turns 8] [--max-tokens 8]
Without a checkpoint, a demo-sized model with random weights is saved to a temporary directory first.
No asserts on time: the script prints figures.
"""

import argparse
import base64
import io
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image as PILImage

QUESTIONS = ["Describe the picture.", "How many red things are there?", "What colour is it?", "Is there a green triangle?",
             "What about blue ones?", "How many of them are large?", "Where is it?", "And the earlier red thing?"]


def random_checkpoint(directory: Path) -> Path:
    import torch

    from mmdialog.config import load_config
    from mmdialog.data.tokenizer import ChatTokenizer
    from mmdialog.model import build_model
    from mmdialog.modelio import save_checkpoint

    cfg = load_config("configs/demo.yaml", ["model.decoder.max_seq_len=1024"])
    tok = ChatTokenizer.train(QUESTIONS * 50 + ["There are 5 shapes.", "yes", "no", "red", "2"], 400)
    torch.manual_seed(0)
    model = build_model(cfg.model, vocab_size=tok.vocab_size, placeholder_ids=dict(tok.media_ids))
    return save_checkpoint(directory / "checkpoint", model, tok, cfg, {})


def data_uri(seed: int, size: int = 64) -> str:
    buf = io.BytesIO()
    PILImage.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(ckpt: str, threads: int = 1, *flags: str) -> tuple[subprocess.Popen, str]:
    """`mmdialog serve` on a free local port, once /health answers: (the process, its URL)."""
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen([sys.executable, "-m", "mmdialog.cli", "serve", "--checkpoint", ckpt, "--port", str(port),
                               *flags], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            if httpx.get(url + "/health").status_code == 200:
                return server, url
        except httpx.HTTPError:
            pass
        if server.poll() is not None or time.time() > deadline:
            server.kill()
            raise SystemExit("the server did not start")
        time.sleep(0.2)


def client(url: str, c: int, turns: int, max_tokens: int, results: list, errors: list) -> None:
    history = []
    with httpx.Client(base_url=url, timeout=300) as http:
        for t in range(turns):
            q = f"{QUESTIONS[t % len(QUESTIONS)]} ({c})"
            content = [{"type": "image_url", "image_url": {"url": data_uri(c)}}, {"type": "text", "text": q}] if t == 0 else q
            history.append({"role": "user", "content": content})
            stream = t % 2 == 1
            body = {"messages": history, "max_tokens": max_tokens, "stream": stream,
                    "stream_options": {"include_usage": True}}
            t0 = time.perf_counter()
            try:
                r = http.post("/v1/chat/completions", json=body)
                if r.status_code != 200:
                    raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
                if stream:
                    import json

                    events = [json.loads(e[6:]) for e in r.text.split("\n\n") if e.startswith("data: {")]
                    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
                    usage = events[-1]["usage"]
                else:
                    text, usage = r.json()["choices"][0]["message"]["content"], r.json()["usage"]
            except Exception as e:  # counted, not raised: the figure is the error count
                errors.append(f"client {c} turn {t}: {e}")
                return
            results.append((t, time.perf_counter() - t0, usage["prompt_tokens"], usage["prompt_tokens_details"]["cached_tokens"]))
            history.append({"role": "assistant", "content": text})


def load_arguments(description: str) -> argparse.ArgumentParser:
    """The options of a load on a local server: the checkpoint, clients x turns, reply length, server threads."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--checkpoint")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--turns", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="OMP threads of the server process")
    return ap


def main():
    args = load_arguments(__doc__.split("\n")[0]).parse_args()
    tmp = tempfile.TemporaryDirectory()
    ckpt = args.checkpoint or str(random_checkpoint(Path(tmp.name)))
    server, url = start_server(ckpt, args.threads)
    try:
        idle_mb = peak_rss_mb(server.pid)
        results, errors = [], []
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as ex:
            for c in range(args.clients):
                ex.submit(client, url, c, args.turns, args.max_tokens, results, errors)
        wall = time.perf_counter() - t0
        health = httpx.get(url + "/health").json()
        peak_mb = peak_rss_mb(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
        tmp.cleanup()
    print(f"{args.clients} clients x {args.turns} turns, {args.max_tokens} new tokens each; wall {wall:.1f}s; "
          f"{len(results)} replies, errors: {len(errors)}")
    for e in errors[:5]:
        print("  ", e)
    print(f"{'turn':>4} {'p50 ms':>8} {'p95 ms':>8} {'prompt':>7} {'cached':>7}")
    for t in range(args.turns):
        rows = [r for r in results if r[0] == t]
        if rows:
            lat = np.array([r[1] for r in rows]) * 1e3
            print(f"{t + 1:>4} {np.percentile(lat, 50):>8.1f} {np.percentile(lat, 95):>8.1f} "
                  f"{np.mean([r[2] for r in rows]):>7.0f} {np.mean([r[3] for r in rows]):>7.0f}")
    prompt, cached = sum(r[2] for r in results), sum(r[3] for r in results)
    print(f"prompt tokens served from the cache: {cached / max(prompt, 1):.1%}; pool: {health['sessions']} sessions, "
          f"{health['cache_bytes'] / 2**20:.1f} MiB of KV cache, {health['hits']} hits, {health['misses']} misses")
    print(f"server memory: {idle_mb:.0f} MiB peak before the load, {peak_mb:.0f} MiB peak after it")


if __name__ == "__main__":
    main()
