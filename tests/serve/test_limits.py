"""Refusals: API keys, every limit, malformed requests, overload, timeouts, failures and graceful shutdown.

Each must be an OpenAI-style error (or a clean stream end), never a crash or a hang.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from tests.serve.conftest import chat, gated, running, sse_payloads, wait_until
from tuneforge.serve.protocol import ChatCompletion, ErrorResponse

QUESTION = [{"role": "user", "content": "hello"}]


def error_of(response, status: int) -> ErrorResponse:
    assert response.status_code == status, response.text
    return ErrorResponse.model_validate_json(response.text)


def test_api_keys(tiny_served, caplog):
    caplog.set_level(logging.INFO)
    with running(tiny_served, api_keys=("key-one", "key-two")) as live:
        model = tiny_served.default
        for key in ("wrong-key-123", "key-one-but-longer", ""):
            with pytest.raises(openai.AuthenticationError):
                live.client(key=key or "x").chat.completions.create(model=model, messages=QUESTION, max_tokens=2)
        with pytest.raises(openai.AuthenticationError):
            live.client(key="wrong-key-123").models.list()
        answer = live.client(key="key-two").chat.completions.create(model=model, messages=QUESTION, max_tokens=2)
        assert answer.choices[0].message.content is not None
        missing = live.post("/v1/chat/completions", chat("hi"))
        assert error_of(missing, 401).error.type == "authentication_error"
        assert missing.headers["www-authenticate"] == "Bearer"
        bad_json = live.post("/v1/chat/completions", content=b"{oops", key="wrong-key-123")
        assert bad_json.status_code == 401  # the key is checked before the body is even read
        assert live.get("/health").status_code == 200 and live.get("/metrics").status_code == 200
    logged = caplog.text
    assert "POST /v1/chat/completions" in logged  # access lines were captured ...
    for key in ("key-one", "key-two", "wrong-key-123"):
        assert key not in logged  # ... and no key appears in them


@pytest.fixture(scope="module")
def strict(tiny_served):
    with running(tiny_served, max_prompt_tokens=40, max_new_tokens=20, max_concurrent=2, request_timeout_s=1.0,
                 max_batch_size=4, max_body_bytes=20_000) as live:
        yield live


def test_prompt_and_generation_limits(strict, tiny_served):
    client = strict.client()
    model = tiny_served.default
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "word " * 100}])
    assert caught.value.code == "context_length_exceeded" and "at most 40" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=model, prompt="word " * 100)
    assert caught.value.param == "prompt"
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=model, messages=QUESTION, max_tokens=21)
    assert caught.value.param == "max_tokens" and "at most 20" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=model, messages=QUESTION, n=5)
    assert caught.value.param == "n"
    answer = client.chat.completions.create(model=model, messages=QUESTION)  # no max_tokens: the server's 20
    assert answer.usage.completion_tokens <= 20
    text = client.completions.create(model=model, prompt="hello")  # OpenAI's default of 16 for text completions
    assert text.usage.completion_tokens <= 16
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=model, prompt=["hello", ""])
    assert caught.value.param == "prompt" and "empty" in caught.value.message
    too_big = strict.post("/v1/chat/completions", chat("x" * 30_000))
    assert error_of(too_big, 413).error.code == "request_too_large"


@pytest.mark.parametrize("body,param", [
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
    ({"messages": [{"role": "user"}]}, "messages.0.content"),
    ({"messages": []}, "messages"),
    ({"messages": "hello"}, "messages"),
    ({}, "messages"),
    ({"messages": QUESTION, "temperature": 3}, "temperature"),
    ({"messages": QUESTION, "temperature": "hot"}, "temperature"),
    ({"messages": QUESTION, "top_p": 0}, "top_p"),
    ({"messages": QUESTION, "max_tokens": 0}, "max_tokens"),
    ({"messages": QUESTION, "n": 0}, "n"),
    ({"messages": QUESTION, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"messages": QUESTION, "stop": [""]}, "stop"),
    ({"messages": QUESTION, "stream": "yes please"}, "stream"),
    ({"messages": QUESTION, "temprature": 0.5}, "temprature"),
    ({"messages": QUESTION, "tools": [{"type": "function"}]}, "tools"),
    ({"messages": QUESTION, "logprobs": True}, "logprobs"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages.0.content.0.type"),
])
def test_wrong_fields_are_400_naming_the_field(strict, body, param):
    error = error_of(strict.post("/v1/chat/completions", body), 400).error
    assert error.param == param
    assert error.type == "invalid_request_error"


@pytest.mark.parametrize("content", [b"{not json", b"", b"[1, 2]", b'"text"', b"\xff\xfe"])
def test_malformed_bodies_are_400(strict, content):
    assert error_of(strict.post("/v1/chat/completions", content=content), 400).error.message


def test_unknown_paths_and_methods_are_openai_errors(strict):
    assert error_of(strict.get("/v1/nothing"), 404).error.code == "not_found"
    assert error_of(strict.get("/v1/chat/completions"), 405).error.code == "method_not_allowed"


def test_over_the_concurrency_limit_is_429_and_the_others_finish(strict, tiny_served):
    client = strict.client()
    results = []

    def ask():
        results.append(client.chat.completions.create(model=tiny_served.default, messages=QUESTION, max_tokens=3))

    with gated(strict.engine) as gate:
        threads = [threading.Thread(target=ask) for _ in range(2)]
        for thread in threads:
            thread.start()
        wait_until(lambda: strict.state.in_flight == 2)
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model=tiny_served.default, messages=QUESTION, max_tokens=3)
        assert caught.value.response.headers["retry-after"] == "1"
        gate.set()
        for thread in threads:
            thread.join(30)
    assert len(results) == 2
    wait_until(lambda: strict.state.in_flight == 0)


def test_timeouts_are_503_and_the_server_recovers(strict, tiny_served):
    client = strict.client()
    with gated(strict.engine) as gate:
        with pytest.raises(openai.InternalServerError) as caught:
            client.chat.completions.create(model=tiny_served.default, messages=QUESTION, max_tokens=3)
        assert caught.value.status_code == 503 and caught.value.code == "timeout"
        stream = strict.post("/v1/chat/completions", chat("hi", max_tokens=3, stream=True))
        assert stream.status_code == 200
        assert sse_payloads(stream.text)[-1]["error"]["code"] == "timeout"
        gate.set()
    wait_until(lambda: strict.state.in_flight == 0 and strict.engine.running == 0 and strict.engine.queue_depth == 0)
    assert client.chat.completions.create(model=tiny_served.default, messages=QUESTION, max_tokens=3).choices


def test_a_failed_forward_pass_is_a_500_and_the_next_request_works(strict, tiny_served, monkeypatch):
    forward = strict.engine._forward
    calls = []

    def broken_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("simulated failure")
        return forward(*args, **kwargs)

    monkeypatch.setattr(strict.engine, "_forward", broken_once)
    failed = strict.post("/v1/chat/completions", chat("hi", max_tokens=3))
    assert "simulated failure" in error_of(failed, 500).error.message
    ChatCompletion.model_validate_json(strict.post("/v1/chat/completions", chat("hi", max_tokens=3)).text)


def test_fifty_concurrent_requests_are_all_answered_or_cleanly_refused(tiny_served):
    with running(tiny_served, max_concurrent=20, max_batch_size=8) as live:
        def ask(i):
            body = chat(f"question {i}", max_tokens=8, stream=i % 2 == 0)
            return live.post("/v1/chat/completions", body, timeout=60)

        with ThreadPoolExecutor(50) as pool:
            responses = list(pool.map(ask, range(50)))
        statuses = [r.status_code for r in responses]
        assert set(statuses) <= {200, 429}, statuses
        assert statuses.count(200) >= 20
        for i, response in enumerate(responses):
            if response.status_code == 429:
                ErrorResponse.model_validate_json(response.text)
            elif i % 2 == 0:
                assert sse_payloads(response.text)[-1]["choices"][0]["finish_reason"] in ("stop", "length")
            else:
                ChatCompletion.model_validate_json(response.text)
        wait_until(lambda: live.state.in_flight == 0)


def test_graceful_shutdown_finishes_the_stream_in_flight(tiny_served):
    received = []
    with running(tiny_served) as live:
        def stream():
            received.append(live.post("/v1/chat/completions", chat("hi", max_tokens=12, stream=True)))

        with gated(live.engine) as gate:
            thread = threading.Thread(target=stream)
            thread.start()
            wait_until(lambda: live.state.in_flight == 1)
            live.server.should_exit = True  # what uvicorn's SIGTERM handler does
            threading.Timer(0.3, gate.set).start()
            thread.join(30)
        live.thread.join(30)
        assert not live.thread.is_alive()
        assert not live.engine.alive
    payloads = sse_payloads(received[0].text)
    assert payloads[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert "".join(p["choices"][0]["delta"].get("content") or "" for p in payloads)


def test_default_max_tokens_never_exceed_the_servers_limit(tiny_served):
    with running(tiny_served, max_new_tokens=5) as live:
        client = live.client()
        text = client.completions.create(model=tiny_served.default, prompt="hello")  # 16 by default, capped at 5
        assert text.usage.completion_tokens <= 5
        reply = client.chat.completions.create(model=tiny_served.default, messages=QUESTION)
        assert reply.usage.completion_tokens <= 5
