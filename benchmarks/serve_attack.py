"""Attacks on a local `mmdialog serve`, and whether it stays small, quick and correct through them.

Phases, each while a prober process times /health every 20 ms and samples the server's resident memory:
  1. one 16 MB message ("a " * 8,000,000: under the 16 MiB body limit, ~4M tokens);
  2. eight concurrent 1 MB messages;
  3. eight concurrent requests, each with 8 distinct 4096x4096 PNG images (mostly blank: small bodies,
     48 MB of pixels each once decoded);
  4. the ordinary load: 16 clients x 8 turns resending their history (benchmarks/serve_load.py's clients).
Prints per phase the statuses and seconds of the attack requests, /health p50/p99/max, the server's peak
resident memory over its idle size, and what /health reports (cache bytes, resident bytes, budget, model).
Targets (issues 16 and 18): refusals <= 1 s each, peak growth <= 300 MB, /health p99 <= 200 ms, 0 errors in
phase 4, the /health memory within the budget plus the model. No asserts: the script prints figures.

Usage: python benchmarks/serve_attack.py [--checkpoint CKPT] [--cache-mb 256] [--clients 16] [--turns 8]
Without a checkpoint, a demo-sized model with random weights is saved to a temporary directory first.
"""

import base64
import io
import json
import multiprocessing
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image as PILImage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import client, load_arguments, random_checkpoint, start_server  # noqa: E402


def rss_mb(pid: int, field: str = "VmRSS:") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return float("nan")


class Prober:
    """Times GET /health every 20 ms and samples the server's RSS, from a process of its own (so that the attack
    clients of this process do not slow the probes down) until stopped."""

    def __init__(self, url: str, pid: int):
        ctx = multiprocessing.get_context("spawn")
        self.stop, self.queue = ctx.Event(), ctx.Queue()
        self.process = ctx.Process(target=_probe, args=(url, pid, self.stop, self.queue), daemon=True)
        self.process.start()
        self.queue.get(timeout=60)  # it is probing

    def finish(self) -> dict:
        self.stop.set()
        out = self.queue.get(timeout=60)
        self.process.join(timeout=10)
        return out


def _probe(url: str, pid: int, stop, queue) -> None:
    latency, rss, failures, health = [], [], 0, {}
    with httpx.Client(base_url=url, timeout=30) as http:
        http.get("/health")
        queue.put("ready")
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                health = http.get("/health").json()
                latency.append(time.perf_counter() - t0)
            except httpx.HTTPError:
                failures += 1
            rss.append(rss_mb(pid))
            stop.wait(0.02)
    queue.put({"latency": latency, "rss": rss, "failures": failures, "health": health})


def big_png(seed: int, side: int = 4096) -> str:
    pixels = np.zeros((side, side, 3), dtype=np.uint8)
    rng = np.random.default_rng(seed)
    for _ in range(8):  # a few lines: each image distinct, the file small
        pixels[rng.integers(side), :, rng.integers(3)] = rng.integers(1, 256)
    buf = io.BytesIO()
    PILImage.fromarray(pixels).save(buf, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def timed_post(http: httpx.Client, body: bytes) -> tuple[int, float, str]:
    t0 = time.perf_counter()
    try:
        r = http.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
        status, text = r.status_code, r.text
    except httpx.HTTPError as e:
        status, text = 0, repr(e)
    took = time.perf_counter() - t0
    message = ""
    if status != 200:
        try:
            message = json.loads(text)["error"]["message"][:90]
        except (ValueError, KeyError, TypeError):
            message = text[:90]
    return status, took, message


def phase(name: str, url: str, pid: int, idle: float, run) -> dict:
    prober = Prober(url, pid)
    t0 = time.perf_counter()
    out = run()
    wall = time.perf_counter() - t0
    time.sleep(0.3)  # the memory after it, too
    probed = prober.finish()
    lat = np.array(probed["latency"]) * 1e3 if probed["latency"] else np.array([float("nan")])
    peak = max(probed["rss"] + [rss_mb(pid, "VmRSS:")])
    h = probed["health"]
    print(f"\n{name} ({wall:.1f} s)")
    if isinstance(out, list):
        for status, took, message in out:
            print(f"  HTTP {status} in {took:.2f} s  {message}")
    else:
        print(f"  {out}")
    print(f"  /health: {len(lat)} probes, p50 {np.percentile(lat, 50):.1f} ms, p99 {np.percentile(lat, 99):.1f} ms,"
          f" max {lat.max():.1f} ms, {probed['failures']} failed")
    print(f"  server RSS: peak {peak:.0f} MiB = idle {idle:.0f} + {peak - idle:.0f} MiB; /health: resident "
          f"{h.get('resident_bytes', 0) / 2**20:.0f} MiB, cache {h.get('cache_bytes', 0) / 2**20:.1f} MiB "
          f"(sessions {h.get('session_bytes', 0) / 2**20:.1f}, media {h.get('media_bytes', 0) / 2**20:.1f}) of a "
          f"{h.get('budget_bytes', 0) / 2**20:.0f} MiB budget, model {h.get('model_bytes', 0) / 2**20:.0f} MiB")
    return {"out": out, "p99": float(np.percentile(lat, 99)), "growth": peak - idle, "health": h, "wall": wall}


def main():
    ap = load_arguments(__doc__.split("\n")[0])
    ap.add_argument("--cache-mb", type=int, default=256)
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory()
    ckpt = args.checkpoint or str(random_checkpoint(Path(tmp.name)))
    print("encoding 64 distinct 4096x4096 PNGs ...", flush=True)
    with ThreadPoolExecutor(2) as ex:
        images = list(ex.map(big_png, range(64)))
    image_bodies = [json.dumps({"messages": [{"role": "user", "content": [
        *({"type": "image_url", "image_url": {"url": u}} for u in images[8 * r:8 * r + 8]),
        {"type": "text", "text": "Describe the pictures."}]}], "max_tokens": 4}).encode() for r in range(8)]
    server, url = start_server(ckpt, args.threads, "--cache-mb", str(args.cache_mb))
    results = {}
    try:
        httpx.post(url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
                   timeout=120)  # warm: the first forward pass allocates what every later one reuses
        idle = rss_mb(server.pid)
        print(f"server: mmdialog serve --cache-mb {args.cache_mb}; idle RSS {idle:.0f} MiB")

        # one client for the attacks, its connections opened first: the figures are the server's, not httpx's set-up
        http = httpx.Client(base_url=url, timeout=600, limits=httpx.Limits(max_connections=8))
        with ThreadPoolExecutor(8) as ex:
            list(ex.map(lambda _: http.get("/health"), range(8)))
            big = json.dumps({"messages": [{"role": "user", "content": "a " * 8_000_000}]}).encode()
            results["16mb"] = phase("1. one 16 MB message", url, server.pid, idle, lambda: [timed_post(http, big)])
            mb = json.dumps({"messages": [{"role": "user", "content": "a " * 500_000}]}).encode()
            results["1mb"] = phase("2. eight concurrent 1 MB messages", url, server.pid, idle,
                                   lambda: list(ex.map(lambda _: timed_post(http, mb), range(8))))
            results["images"] = phase("3. eight concurrent requests of 8 distinct 4096x4096 images", url, server.pid,
                                      idle, lambda: list(ex.map(lambda b: timed_post(http, b), image_bodies)))
        http.close()

        def load():
            replies, errors = [], []
            with ThreadPoolExecutor(args.clients) as ex:
                for c in range(args.clients):
                    ex.submit(client, url, c, args.turns, args.max_tokens, replies, errors)
            for e in errors[:5]:
                print("   ", e)
            results["errors"] = len(errors)
            return f"{args.clients} clients x {args.turns} turns: {len(replies)} replies, {len(errors)} errors"

        results["load"] = phase(f"4. {args.clients} clients x {args.turns} turns", url, server.pid, idle, load)
        peak = rss_mb(server.pid, "VmHWM:")
    finally:
        server.terminate()
        server.wait(timeout=30)
        tmp.cleanup()

    refusals = [took for k in ("16mb", "1mb") for status, took, _ in results[k]["out"]]
    attacks = [results[k] for k in ("16mb", "1mb", "images")]
    h = results["load"]["health"]
    within = h["resident_bytes"] / 2**20 <= idle + (h["budget_bytes"] + h["model_bytes"]) / 2**20
    print("\ntargets")
    print(f"  refusals (16 MB, 8 x 1 MB): slowest {max(refusals):.2f} s (<= 1 s), all 400: "
          f"{all(s == 400 for k in ('16mb', '1mb') for s, _, _ in results[k]['out'])}")
    print(f"  image requests: {[s for s, _, _ in results['images']['out']]}, slowest "
          f"{max(t for _, t, _ in results['images']['out']):.1f} s")
    print(f"  peak RSS growth over idle: 16 MB {results['16mb']['growth']:.0f}, 1 MB x 8 {results['1mb']['growth']:.0f}, "
          f"images {results['images']['growth']:.0f}, load {results['load']['growth']:.0f} MiB (<= 300); "
          f"VmHWM {peak:.0f} MiB")
    print(f"  /health p99 during the attacks: {max(a['p99'] for a in attacks):.1f} ms (<= 200), "
          f"during the load {results['load']['p99']:.1f} ms")
    print(f"  load errors: {results['errors']} (0)")
    print(f"  /health memory after all: resident {h['resident_bytes'] / 2**20:.0f} MiB <= idle {idle:.0f} + budget "
          f"{h['budget_bytes'] / 2**20:.0f} + model {h['model_bytes'] / 2**20:.0f} MiB: {within}; cache "
          f"{h['cache_bytes'] / 2**20:.1f} MiB <= budget: {h['cache_bytes'] <= h['budget_bytes']}")


if __name__ == "__main__":
    main()
