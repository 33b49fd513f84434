import base64
import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fastapi.testclient import TestClient

from mmdialog.chat.sampling import SamplingParams
from mmdialog.serve.app import create_app
from mmdialog.serve.messages import Limits
from mmdialog.serve.pool import turn_keys
from mmdialog.serve.messages import parse_messages
from tests.chat.reference import scratch_reply
from tests.serve.conftest import LiveServer, data_uri, image_part, png_bytes

Q1, Q2, Q3 = "Describe the picture.", "How many red things are there?", "What colour is it?"


@pytest.fixture
def app(served):
    model, proc = served
    return create_app(model, proc, limits=Limits(max_new_tokens=6, max_images=3, max_body_bytes=200_000))


@pytest.fixture
def client(app):
    return TestClient(app, raise_server_exceptions=False)


def ask(client, messages, **kw):
    r = client.post("/v1/chat/completions", json={"messages": messages, **kw})
    assert r.status_code == 200, r.text
    return r.json()


def reference(served, messages, **sampling):
    model, proc = served
    conv = parse_messages(messages, Limits(), None)
    return scratch_reply(model, proc, conv, SamplingParams(**{"max_new_tokens": 6, **sampling}))


def sse_events(text: str) -> list:
    assert text.endswith("data: [DONE]\n\n")
    events = [e for e in text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    return [json.loads(e[6:]) for e in events[:-1]]


def test_health_models_and_page(client):
    assert client.get("/health").json()["status"] == "ok"
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == "mmdialog"
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"] and "/v1/chat/completions" in page.text


def test_completion_in_openai_format_equals_reencoding(client, served):
    messages = [{"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": [image_part(1), {"type": "text", "text": Q1}]}]
    out = ask(client, messages, model="mmdialog")
    assert out["object"] == "chat.completion" and out["id"].startswith("chatcmpl-") and out["model"] == "mmdialog"
    choice = out["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] in ("stop", "length")
    assert choice["message"]["content"] == reference(served, messages)
    u = out["usage"]
    assert u["prompt_tokens"] > 4 and u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    assert u["prompt_tokens_details"]["cached_tokens"] == 0


def test_resent_history_reuses_the_cached_session(client, served, app):
    history = [{"role": "user", "content": [image_part(1), {"type": "text", "text": Q1}]}]
    first = ask(client, history)
    history += [first["choices"][0]["message"], {"role": "user", "content": Q2}]
    second = ask(client, history)
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] >= first["usage"]["prompt_tokens"]
    assert second["choices"][0]["message"]["content"] == reference(served, history)
    history += [second["choices"][0]["message"], {"role": "user", "content": Q3}]
    third = ask(client, history)
    assert third["choices"][0]["message"]["content"] == reference(served, history)
    stats = client.get("/health").json()
    assert stats["hits"] >= 2 and stats["sessions"] == 1  # each turn replaced the entry it extended

    # another client: same first message, different question -> reuses only the identical prefix
    other = [{"role": "user", "content": [image_part(1), {"type": "text", "text": Q3}]}]
    out = ask(client, other)
    assert 0 < out["usage"]["prompt_tokens_details"]["cached_tokens"] < out["usage"]["prompt_tokens"]
    assert out["choices"][0]["message"]["content"] == reference(served, other)
    # a retry (the same request again) is served from the cache and says the same
    again = ask(client, history)
    assert again["choices"][0]["message"] == third["choices"][0]["message"]
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] == again["usage"]["prompt_tokens"] - 1


def test_streaming_sends_openai_chunks_then_done(client):
    messages = [{"role": "user", "content": [image_part(2), {"type": "text", "text": Q2}]}]
    plain = ask(client, messages)
    r = client.post("/v1/chat/completions", json={"messages": messages, "stream": True,
                                                  "stream_options": {"include_usage": True}})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert all(e["object"] == "chat.completion.chunk" and e["id"] == events[0]["id"] for e in events)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert text == plain["choices"][0]["message"]["content"]
    finish = [e for e in events if e["choices"] and e["choices"][0]["finish_reason"]]
    assert len(finish) == 1 and finish[0]["choices"][0]["finish_reason"] == plain["choices"][0]["finish_reason"]
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == plain["usage"]["completion_tokens"]


def test_sampling_parameters(client, served):
    messages = [{"role": "user", "content": Q2}]
    out = ask(client, messages, max_tokens=3)
    assert out["choices"][0]["finish_reason"] == "length" and out["usage"]["completion_tokens"] == 3
    sampled = dict(temperature=1.5, top_p=0.95, seed=11, max_tokens=8)
    a, b = ask(client, messages, **sampled), ask(client, messages, **sampled)
    assert a["choices"][0]["message"] == b["choices"][0]["message"]
    assert a["choices"][0]["message"]["content"] == reference(served, messages, temperature=1.5, top_p=0.95, seed=11,
                                                                max_new_tokens=8)
    full = ask(client, messages, max_tokens=8)["choices"][0]["message"]["content"]
    stop = full[2:4]
    cut = ask(client, messages, max_tokens=8, stop=[stop])
    assert cut["choices"][0]["message"]["content"] == full[: full.index(stop)]
    assert cut["choices"][0]["finish_reason"] == "stop"


BAD = [
    ({"messages": []}, 400, "messages is empty"),
    ({}, 400, "messages must be a list"),
    ({"messages": [{"role": "tool", "content": "x"}]}, 400, "messages[0].role 'tool' is not supported"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}, 400,
     "last message must be from the user"),
    ({"messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content must be a string or a list"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}]}]},
     400, "messages[0].content[0].image_url.url: the data: URI is not valid base64"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {
        "url": "data:image/png;base64," + base64.b64encode(b"not a png").decode()}}]}]}, 400, "cannot decode the image"),
    ({"messages": [{"role": "user", "content": [image_part(i) for i in range(4)]}]}, 400, "too many images"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x.org/a.png"}}]}]},
     400, "remote image URLs are not fetched"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "/etc/passwd"}}]}]},
     400, "local image paths are not allowed"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}, 400,
     "input_audio parts are not supported"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": -1}, 400, "temperature must be a number in [0, 2]"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, 400, "max_tokens must be an integer >= 1"),
    ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, 400, "n must be 1"),
    ({"messages": [{"role": "user", "content": "hi"}], "stop": [1]}, 400, "stop must be"),
    ({"messages": [{"role": "user", "content": "hi"}], "model": "gpt-4"}, 404, "model 'gpt-4' does not exist"),
    ({"messages": [{"role": "user", "content": "red " * 600}]}, 400, "over the model's max_seq_len"),
]


@pytest.mark.parametrize("body,status,needle", BAD, ids=[b[2][:30] for b in BAD])
def test_bad_requests_get_openai_errors(client, body, status, needle):
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert needle in err["message"] and err["type"] == "invalid_request_error" and "Traceback" not in r.text


def test_malformed_and_oversized_bodies(client):
    r = client.post("/v1/chat/completions", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    big = {"messages": [{"role": "user", "content": "x" * 300_000}]}
    r = client.post("/v1/chat/completions", json=big)
    assert r.status_code == 413 and "over the limit of 200000" in r.json()["error"]["message"]
    r = client.get("/v1/nothing")
    assert r.status_code == 404 and "no such endpoint: GET /v1/nothing" in r.json()["error"]["message"]
    r = client.get("/v1/chat/completions")
    assert r.status_code == 405 and "error" in r.json()


def test_internal_errors_are_500_json_without_traceback(client, monkeypatch):
    from mmdialog.chat.session import ChatSession

    def boom(self, *a, **k):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(ChatSession, "prefill", boom)
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
    assert "secret internals" not in r.text and "Traceback" not in r.text


def test_api_key_guards_everything_but_health(served):
    model, proc = served
    client = TestClient(create_app(model, proc, api_key="s3cret", limits=Limits(max_new_tokens=2)))
    body = {"messages": [{"role": "user", "content": "hi"}]}
    assert client.get("/health").status_code == 200
    for r in [client.get("/v1/models"), client.post("/v1/chat/completions", json=body),
              client.post("/v1/chat/completions", json=body, headers={"Authorization": "Bearer wrong"})]:
        assert r.status_code == 401 and "API key" in r.json()["error"]["message"]
    ok = {"Authorization": "Bearer s3cret"}
    assert client.get("/v1/models", headers=ok).status_code == 200
    assert client.post("/v1/chat/completions", json=body, headers=ok).status_code == 200


def test_local_images_only_under_the_allowed_directory(served, tmp_path):
    model, proc = served
    allowed = tmp_path / "images"
    allowed.mkdir()
    (allowed / "a.png").write_bytes(png_bytes(3))
    (tmp_path / "secret.png").write_bytes(png_bytes(4))
    (allowed / "link.png").symlink_to(tmp_path / "secret.png")
    client = TestClient(create_app(model, proc, allow_dir=allowed, limits=Limits(max_new_tokens=2)))

    def post(url):
        return client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": Q1}]}]})

    by_path, by_uri = post(str(allowed / "a.png")), post(data_uri(3))
    assert by_path.status_code == 200 and post(f"file://{allowed}/a.png").status_code == 200
    assert by_path.json()["choices"][0]["message"] == by_uri.json()["choices"][0]["message"]
    for url in [str(tmp_path / "secret.png"), f"{allowed}/../secret.png", str(allowed / "link.png"), "../secret.png"]:
        r = post(url)
        assert r.status_code == 400 and "outside the directory this server allows" in r.json()["error"]["message"], url
    r = post(str(allowed / "missing.png"))
    assert r.status_code == 400 and "no readable image" in r.json()["error"]["message"]


def test_pool_memory_budget_evicts_least_recently_used(served):
    model, proc = served
    app = create_app(model, proc, limits=Limits(max_new_tokens=2), cache_bytes=60_000)
    client = TestClient(app)
    pool = app.state.pool
    for i in range(6):
        ask(client, [{"role": "user", "content": [image_part(i), {"type": "text", "text": Q1}]}])
        # the budget holds the sessions (KV cache, ids, conversation) and the encoded images, a quarter at most
        assert pool.nbytes <= 60_000 and pool.media.nbytes <= 15_000
        assert pool.nbytes == sum(e.session.nbytes for e in pool.entries) + pool.media.nbytes
    assert 0 < len(pool.entries) < 6 and len(pool.media) == 6
    newest = turn_keys(pool.entries[-1].session.conv)
    assert newest == pool.entries[-1].keys and pool.entries[-1].session.conv.turns[0].parts[0].pixels is not None


def test_concurrent_clients_get_their_own_conversations(served, app):
    """Eight clients hold three-turn conversations at once against a live server; each reply must equal
    re-encoding that client's own conversation."""
    with LiveServer(app) as server:
        def client_run(c: int):
            history, replies = [], []
            with httpx.Client(base_url=server.url, timeout=60) as http:
                for turn, q in enumerate([Q1, Q2, Q3]):
                    content = [image_part(c), {"type": "text", "text": q}] if turn == 0 else f"{q} ({c})"
                    history.append({"role": "user", "content": content})
                    stream = turn == 1
                    r = http.post("/v1/chat/completions", json={"messages": history, "stream": stream})
                    assert r.status_code == 200, r.text
                    if stream:
                        text = "".join(e["choices"][0]["delta"].get("content", "") for e in sse_events(r.text))
                    else:
                        text = r.json()["choices"][0]["message"]["content"]
                    history.append({"role": "assistant", "content": text})
                    replies.append((list(history[:-1]), text))
            return replies

        with ThreadPoolExecutor(8) as ex:
            results = list(ex.map(client_run, range(8)))
    for replies in results:
        for messages, text in replies:
            assert text == reference(served, messages)
