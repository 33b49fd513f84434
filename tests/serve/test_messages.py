"""The request models: pydantic's errors answered as OpenAI's, each naming its field as messages[2].content[1]...;
what OpenAI clients send besides (fields this server does not use, nulls) is accepted as before."""

import pytest
from fastapi.testclient import TestClient

from mmdialog.serve.app import create_app
from mmdialog.serve.messages import APIError, ChatCompletionRequest, Limits, parse_request, where
from tests.serve.conftest import data_uri

HI = {"role": "user", "content": "hi"}
CHAT = [HI, {"role": "assistant", "content": "hello"}]


@pytest.fixture(scope="module")
def client(served):
    model, proc = served
    return TestClient(create_app(model, proc, limits=Limits(max_new_tokens=2)), raise_server_exceptions=False)


BAD = [  # body, param, code, words of the message
    ({"messages": [HI], "temperature": "hot"}, "temperature", "invalid_value",
     "temperature must be a number in [0, 2], got 'hot'"),
    ({"messages": [HI], "temperature": 2.5}, "temperature", "invalid_value", "got 2.5"),
    ({"messages": [HI], "temperature": True}, "temperature", "invalid_value", "got True"),
    ({"messages": [HI], "top_p": 0}, "top_p", "invalid_value", "top_p must be a number in (0, 1]"),
    ({"messages": [HI], "top_k": 2.5}, "top_k", "invalid_value", "top_k must be an integer >= 0, got 2.5"),
    ({"messages": [HI], "seed": "7"}, "seed", "invalid_value", "seed must be an integer"),
    ({"messages": [HI], "max_completion_tokens": 0}, "max_completion_tokens", "invalid_value", "an integer >= 1"),
    ({"messages": [HI], "stop": ["a"] * 5}, "stop", "invalid_value", "at most 4"),
    ({"messages": [HI], "stream": "yes"}, "stream", "invalid_value", "stream must be true or false, got 'yes'"),
    ({"messages": [HI], "stream_options": 3}, "stream_options", "invalid_value", "stream_options must be an object"),
    ({"messages": [HI], "model": 3}, "model", "invalid_value", "model must be a string"),
    ({"messages": [HI], "cache_salt": ""}, "cache_salt", "invalid_value", "cache_salt must be a non-empty string"),
    ({"messages": "hi"}, "messages", "invalid_type", "messages must be a list of {role, content} objects"),
    ({"messages": [HI, 3]}, "messages[1]", "invalid_value", "messages[1] must be an object with role and content"),
    ({"messages": [HI, {"role": 1, "content": "x"}]}, "messages[1].role", "invalid_value", "1 is not supported"),
    ({"messages": [*CHAT, {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "video"}]}]},
     "messages[2].content[1]", "invalid_value", "must be an object with type 'text' or 'image_url', got 'video'"),
    ({"messages": [*CHAT, {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "video_url"}]}]},
     "messages[2].content[1]", "unsupported_content", "video_url parts are not supported"),
    ({"messages": [*CHAT, {"role": "user", "content": [{"type": "text", "text": "a"},
                                                       {"type": "text", "text": ["b"]}]}]},
     "messages[2].content[1].text", "invalid_value", "messages[2].content[1].text must be a string"),
    ({"messages": [*CHAT, {"role": "user", "content": [{"type": "text", "text": "a"},
                                                       {"type": "image_url", "image_url": {"url": 5}}]}]},
     "messages[2].content[1].image_url.url", "invalid_value", "messages[2].content[1].image_url.url must be a string"),
]


@pytest.mark.parametrize("body,param,code,needle", BAD, ids=[b[1] + ":" + b[3][-12:] for b in BAD])
def test_wrong_types_ranges_and_parts_are_400s_naming_the_field(client, body, param, code, needle):
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    assert err["param"] == param and err["code"] == code and needle in err["message"], err
    assert "pydantic" not in r.text and "Input should be" not in r.text  # this server's words, not the library's


def test_a_body_that_is_no_object_names_no_field():
    for body in [[], "x", None, 3]:
        with pytest.raises(APIError) as e:
            parse_request(body, Limits())
        assert (e.value.status, e.value.param, e.value.code) == (400, None, "invalid_json")
        assert e.value.message == "the request body must be a JSON object"


def test_what_openai_clients_send_besides_is_accepted():
    body = {"messages": [{"role": "developer", "content": "Be brief.", "name": "ops"}, HI,
                         {"role": "assistant", "content": None, "tool_calls": [], "refusal": None},
                         {"role": "user", "content": [{"type": "text", "text": "and?"},
                                                      {"type": "image_url",
                                                       "image_url": {"url": data_uri(1), "detail": "low"}}]}],
            "frequency_penalty": 0, "presence_penalty": "anything", "logprobs": False, "tools": [{"type": "function"}],
            "temperature": 1, "top_k": 3.0, "seed": None, "max_tokens": None, "n": 1, "stop": "END", "stream": None,
            "stream_options": {"include_usage": True, "continuous_usage_stats": False}, "user": "u1", "metadata": {}}
    r = parse_request(body, Limits(max_new_tokens=5), image_size=16)
    assert [t.role for t in r.conversation.turns] == ["system", "user", "assistant", "user"]
    assert r.conversation.turns[2].parts[0].text == "" and r.conversation.turns[3].parts[1].pixels.shape == (16, 16, 3)
    s = r.sampling
    assert (s.temperature, s.top_k, s.seed, s.max_new_tokens, s.stop) == (1.0, 3, None, 5, ["END"])
    assert type(s.temperature) is float and type(s.top_k) is int
    assert (r.stream, r.include_usage, r.cache_salt) == (False, True, "u1")


def test_pydantic_locations_become_openai_field_names():
    loc = ("messages", 2, "content", 1, "type=image_url", "image_url", "url")  # with pydantic's union tag
    assert where(loc) == "messages[2].content[1].image_url.url"
    assert where(("temperature",)) == "temperature" and where(()) is None
    m = ChatCompletionRequest.model_validate({"messages": [HI], "max_completion_tokens": 7, "max_tokens": 3})
    assert m.max_completion_tokens == 7 and m.messages[0].content[0].text == "hi"
