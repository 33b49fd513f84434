"""`mmdialog serve` as a user runs it: a real process on a local port, answering the request of docs/serving.md."""

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from mmdialog.modelio import save_checkpoint
from tests.serve.conftest import data_uri, free_port

ROOT = Path(__file__).resolve().parents[2]


def test_serve_command_answers_openai_requests(served, tokenizer, tiny_cfg, tmp_path):
    model, _ = served
    ckpt = save_checkpoint(tmp_path / "checkpoint", model, tokenizer, tiny_cfg, {})
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MMDIALOG_API_KEY": "k1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "mmdialog.cli", "serve", "--checkpoint", str(ckpt), "--port", str(port),
                             "--max-new-tokens", "4"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stdout.read()
            assert time.time() < deadline, "the server did not come up in 60 s"
            time.sleep(0.1)
        body = {"model": "mmdialog", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "How many red things are there?"},
            {"type": "image_url", "image_url": {"url": data_uri(1)}}]}]}
        assert httpx.post(url + "/v1/chat/completions", json=body).status_code == 401
        r = httpx.post(url + "/v1/chat/completions", json=body, headers={"Authorization": "Bearer k1"}, timeout=60)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["role"] == "assistant"
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    assert f"serving mmdialog on http://127.0.0.1:{port}/ (an API key" in out


def test_serve_with_a_missing_checkpoint_says_so(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mmdialog.cli", "serve", "--checkpoint", str(tmp_path / "nope")],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2 and "checkpoint directory not found" in r.stderr and "Traceback" not in r.stderr
