"""The server under hostile clients: every case here broke an earlier `ember serve` (500s, stalls, lost
keep-alive connections, ignored fields, a dishonest OpenAPI document, a busy port found after loading)."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
import time

import httpx
import pytest

from .conftest import API_KEY, MODEL

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}


def post(api, path: str, body, **kw) -> httpx.Response:
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(f"{api.url}{path}", headers=auth(), content=content, timeout=60, **kw)


def chat(api, **fields) -> httpx.Response:
    return post(api, "/v1/chat/completions", {"model": MODEL, "messages": QUESTION, "max_tokens": 3, **fields})


def assert_openai_error(r: httpx.Response, status: int, param=None) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    return error


# -- 400 for every invalid value ---------------------------------------------------------------------------------
@pytest.mark.parametrize("path, raw, param", [
    ("/v1/chat/completions", '{"model": "tiny", "messages": [{"role": "user", "content": "a\\ud800b"}]}',
     "messages.0.content"),
    ("/v1/completions", '{"model": "tiny", "prompt": "a\\udfffb"}', "prompt"),
    ("/v1/chat/completions", '{"model": "tiny", "messages": [{"role": "user", "content": "a"}], "stop": "\\ud83d"}',
     "stop"),
])
def test_a_lone_surrogate_is_400_not_500(api, path, raw, param):
    error = assert_openai_error(post(api, path, raw.encode()), 400, param)
    assert "lone UTF-16 surrogate" in error["message"]


@pytest.mark.parametrize("fields, param, words", [
    ({"temperature": 1e-300}, "temperature", "use 0 for greedy"),
    ({"temperature": 0.005}, "temperature", "use 0 for greedy"),
    ({"seed": 2**64}, "seed", "less than"),
    ({"seed": -(2**63) - 1}, "seed", "greater than"),
    ({"max_tokens": 2**31}, "max_tokens", "less than or equal to 2147483647"),
    ({"logit_bias": {"12": 101}}, "logit_bias", "-100..100"),
    ({"logit_bias": {"x": 1}}, "logit_bias", "token ids"),
    ({"logit_bias": {"999999999": 1}}, "logit_bias", "outside the vocabulary"),
    ({"top_logprobs": 21, "logprobs": True}, "top_logprobs", "less than or equal"),
])
def test_out_of_range_values_are_400(api, fields, param, words):
    assert words in assert_openai_error(chat(api, **fields), 400, param)["message"]


def test_the_edge_values_themselves_are_accepted(api):
    for fields in ({"temperature": 0.01, "seed": 2**63 - 1}, {"temperature": 0, "seed": -(2**63)},
                   {"temperature": 2, "top_p": 1}):
        assert chat(api, **fields).status_code == 200


@pytest.mark.parametrize("option, field, value", [
    ("temperature", "temperature", -1), ("temperature", "temperature", 2.5), ("temperature", "temperature", 0.005),
    ("top_p", "top_p", 0), ("top_p", "top_p", 1.5), ("max_new_tokens", "max_tokens", 0),
])
def test_chat_flags_refuse_what_requests_refuse(api, option, field, value):
    """One table of ranges (ember.inference.completion.RANGES) for serve's requests and the generation flags."""
    from types import SimpleNamespace

    from ember.errors import ConfigError
    from ember.inference.cli import check_generation_args

    assert_openai_error(chat(api, **{field: value}), 400, field)
    with pytest.raises(ConfigError, match=f"^--{option.replace('_', '-')} {value} is "):
        check_generation_args(SimpleNamespace(**{option: value}, do_sample=True))


def test_deeply_nested_json_is_400(api):
    error = assert_openai_error(post(api, "/v1/chat/completions", b"[" * 200_000 + b"]" * 200_000), 400)
    assert "could not parse" in error["message"]


# -- answer-changing fields: implemented or refused ---------------------------------------------------------------
@pytest.mark.parametrize("fields, param", [
    ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
    ({"tools": [{}]}, "tools.0.type"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"tool_choice": "always"}, "tool_choice"),  # tests/serving/test_tools.py has the rest
    ({"function_call": {"name": "f"}}, "function_call"),
    ({"best_of": 2}, "best_of"),
    ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
    ({"modalities": ["text", "audio"]}, "modalities.1"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "foo"}}}},
     "response_format"),
])
def test_unsupported_answer_changing_fields_are_refused(api, fields, param):
    assert_openai_error(chat(api, **fields), 400, param)


def test_their_off_values_are_accepted(api):
    r = chat(api, tools=[], tool_choice="none", functions=None, best_of=1, modalities=["text"], audio=None,
             parallel_tool_calls=False, response_format={"type": "text"})
    assert r.status_code == 200, r.text
    r = post(api, "/v1/completions", {"model": MODEL, "prompt": "Hi", "max_tokens": 2, "echo": True, "suffix": None})
    assert r.status_code == 200 and r.json()["choices"][0]["text"].startswith("Hi")
    assert_openai_error(post(api, "/v1/completions", {"model": MODEL, "prompt": "Hi", "suffix": "x"}), 400, "suffix")
    assert_openai_error(post(api, "/v1/completions", {"model": MODEL, "prompt": ""}), 400, "prompt")


# -- limits -----------------------------------------------------------------------------------------------------
def test_one_request_may_not_exceed_the_batch(api):
    """256 prompts × n=8 once became 2,048 rows in one batch; now a request holds at most --max-batch rows."""
    body = {"model": MODEL, "prompt": ["Hi"] * 3, "n": 3, "max_tokens": 2}
    error = assert_openai_error(post(api, "/v1/completions", body), 400, "n")
    assert error["code"] == "too_many_sequences" and "9 sequences" in error["message"]
    r = post(api, "/v1/completions", {**body, "n": 2, "prompt": ["Hi"] * 4})
    assert r.status_code == 200 and len(r.json()["choices"]) == 8


def test_a_body_over_the_limit_is_413_without_reading_it(api):
    started = time.monotonic()
    big = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x" * (1 << 20)}]})
    error = assert_openai_error(post(api, "/v1/chat/completions", big), 413)
    assert "--max-request-bytes" in error["message"] and time.monotonic() - started < 10


def test_tokenizing_a_prompt_does_not_block_the_event_loop(api, monkeypatch):
    """A slow prompt (held here on an event) once froze /health and every other client for its whole duration."""
    release, entered = threading.Event(), threading.Event()
    original = api.engine.prompt_ids

    def slow_prompt_ids(messages, tools=None):
        entered.set()
        assert release.wait(30)
        return original(messages, tools)

    monkeypatch.setattr(api.engine, "prompt_ids", slow_prompt_ids)
    result: list = []
    worker = threading.Thread(target=lambda: result.append(chat(api)))
    worker.start()
    try:
        assert entered.wait(30)
        started = time.monotonic()
        assert httpx.get(f"{api.url}/health", timeout=5).status_code == 200
        models = httpx.get(f"{api.url}/v1/models", headers=auth(), timeout=5)
        assert models.status_code == 200 and time.monotonic() - started < 5
    finally:
        release.set()
        worker.join(60)
    assert result[0].status_code == 200


def test_greedy_answers_are_unchanged_by_sampled_requests_beside_them(api, client):
    """Seeds, temperatures and biases are per row: they never reach the greedy requests sharing the batch."""
    from ember.inference.completion import GenerationOptions

    questions = [[{"role": "user", "content": f"Question {i}: " + "why " * i}] for i in range(3)]
    greedy: dict[int, str] = {}
    noisy: list[int] = []

    def ask(i: int) -> None:
        greedy[i] = client.chat.completions.create(model=MODEL, messages=questions[i], max_tokens=10,
                                                   temperature=0).choices[0].message.content

    def sample(i: int) -> None:
        r = chat(api, temperature=1.5, seed=2**63 - 1 - i, logit_bias={"17": 5}, max_tokens=10, n=2)
        noisy.append(r.status_code)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
    threads += [threading.Thread(target=sample, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert noisy == [200, 200, 200]
    assert greedy == {i: api.engine.generate(questions[i], GenerationOptions(max_new_tokens=10)).text
                      for i in range(3)}


# -- errors keep the connection; no internals ----------------------------------------------------------------
def test_an_internal_error_is_one_log_line_a_plain_500_and_the_connection_stays(api, monkeypatch, caplog):
    server = api.app.state.server

    def broken(req, tools=None):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(server, "chat_prompt", broken)
    host, port = api.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    body = json.dumps({"model": MODEL, "messages": QUESTION, "max_tokens": 2})
    with caplog.at_level(logging.ERROR):
        conn.request("POST", "/v1/chat/completions", body, auth())
        r = conn.getresponse()
        payload = json.loads(r.read())
    assert r.status == 500 and r.getheader("connection") != "close"
    assert payload["error"]["type"] == "server_error" and "secret" not in payload["error"]["message"]
    assert "RuntimeError" not in payload["error"]["message"]
    tracebacks = [rec for rec in caplog.records if rec.exc_info]
    assert len(tracebacks) == 1 and "secret internal detail" in str(tracebacks[0].exc_info[1])
    local = conn.sock.getsockname()
    conn.request("POST", "/v1/chat/completions", json.dumps({"model": MODEL, "messages": QUESTION, "max_tokens": 2,
                                                             "temperature": 7}), auth())
    r = conn.getresponse()
    assert r.status == 400 and json.loads(r.read())["error"]["param"] == "temperature"
    conn.request("GET", "/health")
    r = conn.getresponse()
    assert r.status == 200 and json.loads(r.read())["status"] == "ok"
    assert conn.sock.getsockname() == local  # the same keep-alive connection all along
    conn.close()


def test_405_says_which_methods_are_allowed(api):
    r = httpx.get(f"{api.url}/v1/chat/completions", headers=auth())
    assert_openai_error(r, 405)
    assert r.headers["allow"] == "POST"
    r = httpx.post(f"{api.url}/v1/models", headers=auth())
    assert r.status_code == 405 and r.headers["allow"] in ("GET, HEAD", "HEAD, GET", "GET")


# -- the OpenAPI document ------------------------------------------------------------------------------------------
def test_openapi_document_is_behind_the_key_and_states_the_real_responses(api):
    assert httpx.get(f"{api.url}/openapi.json").status_code == 401
    for path in ("/docs", "/redoc"):  # Swagger UI would load its scripts from a CDN: not served
        assert httpx.get(f"{api.url}{path}", headers=auth()).status_code == 404
    doc = httpx.get(f"{api.url}/openapi.json", headers=auth()).json()
    assert "422" not in json.dumps(doc) or all("422" not in op.get("responses", {})
                                               for p in doc["paths"].values() for op in p.values())
    chat_op = doc["paths"]["/v1/chat/completions"]["post"]
    assert set(chat_op["responses"]) == {"200", "400", "401", "404", "413", "500"}
    assert "text/event-stream" in chat_op["responses"]["200"]["content"]
    assert set(doc["paths"]["/v1/models"]["get"]["responses"]) == {"200", "401"}
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    temperature = doc["components"]["schemas"]["ChatCompletionRequest"]["properties"]["temperature"]
    assert {"type": "number", "minimum": 0.01, "maximum": 2} in temperature["anyOf"]


# -- ember serve on a busy port -----------------------------------------------------------------------------------
def test_serve_on_a_busy_port_fails_before_loading_the_model(capsys):
    from ember.cli import main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        started = time.monotonic()
        code = main(["serve", "--model", "/no/such/model/dir", "--port", str(port)])
    err = capsys.readouterr().err
    assert code == 2 and time.monotonic() - started < 5
    assert f"cannot listen on 127.0.0.1:{port}" in err and "pick another --port" in err
    assert "/no/such/model/dir" not in err  # the model was never looked at


@pytest.mark.parametrize("command, port", [(["serve", "--model", "/no/such/model/dir"], "99999"),
                                           (["serve", "--model", "/no/such/model/dir"], "65536"),
                                           (["serve", "--model", "/no/such/model/dir"], "-1"),
                                           (["webui", "--model", "/no/such/model/dir"], "99999"),
                                           (["eval", "annotate", "/no/such/compare/run"], "99999")])
def test_a_port_outside_0_to_65535_is_refused(capsys, command, port):
    """99999 once bound 34463 (the socket layer takes it modulo 65536); -1 was reported as a bad host."""
    from ember.cli import main

    assert main([*command, "--port", port]) == 2
    assert capsys.readouterr().err == f"error: --port {port} is not a TCP port: use a number from 0 to 65535\n"


def test_a_chunked_body_over_the_limit_is_413_too(api):
    def chunks():
        part = b'{"model": "tiny", "messages": [{"role": "user", "content": "' + b"x" * 65536
        yield part
        for _ in range(40):
            yield b"x" * 65536
        yield b'"}]}'

    r = httpx.post(f"{api.url}/v1/chat/completions", headers={"Authorization": f"Bearer {API_KEY}"},
                   content=chunks(), timeout=60)
    assert_openai_error(r, 413)


def test_a_failed_generation_is_a_plain_500_and_the_server_goes_on(api, monkeypatch, caplog):
    def boom(finished):
        raise RuntimeError("secret tensor detail")

    monkeypatch.setattr(api.scheduler._decoder, "_decode", boom)
    with caplog.at_level(logging.ERROR):
        r = chat(api)
    error = assert_openai_error(r, 500)
    assert error["type"] == "server_error" and "secret" not in error["message"]
    assert [rec.getMessage() for rec in caplog.records if rec.levelno >= logging.ERROR] == [
        "generation failed for 1 rows: RuntimeError: secret tensor detail"]  # one line, no traceback
    assert chat(api).status_code == 200  # a fresh decoder took over
