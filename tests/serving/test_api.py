"""The OpenAI-compatible API, driven by the official `openai` client against uvicorn on localhost."""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest

from ember.data.conversation import Message
from ember.inference.completion import GenerationOptions, Row

from .conftest import API_KEY, MODEL

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def reference(engine, messages, max_tokens: int, stop=()) -> str:
    msgs = [Message(m["role"], m["content"]) for m in messages]
    return engine.generate(msgs, GenerationOptions(max_new_tokens=max_tokens, stop=list(stop))).text


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"}


def test_non_stream_answer_equals_engine_generate(client, api):
    r = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=10, temperature=0)
    assert r.object == "chat.completion" and r.model == MODEL and r.id.startswith("chatcmpl-")
    assert [c.index for c in r.choices] == [0]
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == reference(api.engine, QUESTION, 10)
    assert r.choices[0].finish_reason == "length"
    prompt_tokens = len(api.engine.prompt_ids(QUESTION))
    usage = (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens)
    assert usage == (prompt_tokens, 10, prompt_tokens + 10)


def test_stream_deltas_join_to_the_same_text(client, api):
    chunks = list(client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=10, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reference(api.engine, QUESTION, 10)
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # really streamed
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10
    assert len({c.id for c in chunks}) == 1


def test_n_choices_greedy_and_seeded_sampling(client, api):
    greedy = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=6, temperature=0, n=2)
    want = reference(api.engine, QUESTION, 6)
    assert [(c.index, c.message.content) for c in greedy.choices] == [(0, want), (1, want)]
    assert greedy.usage.completion_tokens == 12

    def sample():
        r = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=8, temperature=1.0, n=2, seed=7)
        return [c.message.content for c in r.choices]

    first = sample()
    assert first == sample()  # a seed makes sampling repeatable
    assert first[0] != first[1]  # the two choices are drawn independently


def test_stop_strings_cut_the_answer_stream_and_non_stream(client, api):
    full = reference(api.engine, QUESTION, 12)
    stop = full[4:9]
    r = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=12, temperature=0, stop=[stop, "@@"])
    assert (r.choices[0].message.content, r.choices[0].finish_reason) == (full[: full.index(stop)], "stop")
    streamed = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=12, temperature=0, stop=stop,
                                              stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == full[: full.index(stop)]


def test_completions_endpoint_takes_raw_prompt_text(client, api):
    prompts = ["Once upon a time", "The answer is"]
    r = client.completions.create(model=MODEL, prompt=prompts, max_tokens=5, temperature=0)
    tok = api.engine.tokenizer
    rows = [Row(tok(p)["input_ids"], 5) for p in prompts]
    want = [c.text for c in api.engine.generate_rows(rows, GenerationOptions())]
    assert r.object == "text_completion"
    assert [(c.index, c.text) for c in r.choices] == [(0, want[0]), (1, want[1])]
    assert r.usage.prompt_tokens == sum(len(row.prompt) for row in rows)
    streamed = client.completions.create(model=MODEL, prompt=prompts[0], max_tokens=5, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == want[0]


def test_models_health_and_auth(client, api):
    assert [m.id for m in client.models.list()] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    health = httpx.get(f"{api.url}/health").json()  # no key needed
    assert (health["status"], health["model"]) == ("ok", MODEL)
    assert health["jobs"] == len(api.scheduler.history) and health["rows"] >= health["jobs"]
    assert health["steps"] > 0 and health["row_steps"] >= health["steps"] and health["waiting"] >= 0
    for headers, code in (({}, "missing_api_key"), ({"Authorization": "Bearer wrong"}, "invalid_api_key")):
        for method, path in (("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("POST", "/v1/completions")):
            r = httpx.request(method, f"{api.url}{path}", headers=headers, json={})
            assert r.status_code == 401, path
            assert r.json()["error"]["code"] == code


def test_wrong_key_raises_authentication_error(api):
    from openai import OpenAI

    bad = OpenAI(base_url=f"{api.url}/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        bad.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=2)
    assert info.value.status_code == 401
    assert info.value.body == {"message": "Incorrect API key provided", "type": "invalid_request_error", "param": None,
                               "code": "invalid_api_key"}


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-4o", messages=QUESTION, max_tokens=2)
    assert info.value.status_code == 404
    assert (info.value.body["code"], info.value.body["param"]) == ("model_not_found", "model")
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_context_too_long_is_400(client, api):
    prompt_tokens = len(api.engine.prompt_ids(QUESTION))
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=2049 - prompt_tokens)
    assert info.value.body["code"] == "context_length_exceeded"
    assert f"you requested 2049 tokens ({prompt_tokens} in the messages" in info.value.body["message"]
    huge = [{"role": "user", "content": "word " * 2100}]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=huge)
    assert info.value.body["code"] == "context_length_exceeded"


def test_bad_json_is_400_with_openai_error_body(api):
    r = httpx.post(f"{api.url}/v1/chat/completions", content=b'{"model": "tiny", "messages": [',
                   headers={**auth(), "Content-Type": "application/json"})
    assert r.status_code == 400
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and "could not parse the JSON body" in error["message"]


@pytest.mark.parametrize("body, param", [
    ({"temperature": 3}, "temperature"),
    ({"n": 0}, "n"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"top_p": 0}, "top_p"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "x"}}]}]},
     "messages.0.content"),
    ({"presence_penalty": 3.0}, "presence_penalty"),
    ({"tools": [{"type": "function", "function": {"name": "f g"}}]}, "tools.0.function.name"),
])
def test_invalid_parameters_are_400(api, body, param):
    r = httpx.post(f"{api.url}/v1/chat/completions", headers=auth(),
                   json={"model": MODEL, "messages": QUESTION, "max_tokens": 2, **body})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_concurrent_clients_each_get_their_own_answer(client, api):
    questions = {i: [{"role": "user", "content": f"Client {i} asks: " + "why " * (i * 3)}] for i in range(4)}
    answers: dict[int, str] = {}

    def ask(i: int) -> None:
        r = client.chat.completions.create(model=MODEL, messages=questions[i], max_tokens=8 + i, temperature=0)
        answers[i] = r.choices[0].message.content

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert answers == {i: reference(api.engine, questions[i], 8 + i) for i in range(4)}
    assert len(set(answers.values())) == 4


def wait_for_cancelled(scheduler, before: int, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in list(scheduler.history)[before:]:
            if any(c.finish_reason == "cancelled" for c in record.completions):
                return record
        time.sleep(0.05)
    raise AssertionError("the abandoned request was not cancelled")


def test_client_disconnect_mid_stream_stops_generation(api):
    before = len(api.scheduler.history)
    body = {"model": MODEL, "messages": QUESTION, "max_tokens": 1900, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{api.url}/v1/chat/completions", headers=auth(), json=body, timeout=60) as r:
        got = []
        for line in r.iter_lines():  # read a few chunks, then hang up
            if line.startswith("data: {"):
                got.append(json.loads(line[len("data: "):]))
            if len(got) >= 3:
                break
    assert got[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    record = wait_for_cancelled(api.scheduler, before)
    assert record.completions[0].completion_tokens < 1900  # stopped long before the limit


def test_client_timeout_cancels_a_non_stream_request(api):
    before = len(api.scheduler.history)
    body = {"model": MODEL, "messages": QUESTION, "max_tokens": 1900, "temperature": 0}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{api.url}/v1/chat/completions", headers=auth(), json=body, timeout=1.0)
    record = wait_for_cancelled(api.scheduler, before)
    assert record.completions[0].completion_tokens < 1900
