"""The OpenAI API through the official `openai` client, against a server on a free loopback port.

Every raw response body is also validated against tuneforge's protocol models.
"""

from __future__ import annotations

import threading

import openai
import pytest
import torch

from tests.serve.conftest import chat, gated, running, sse_payloads, wait_until
from tuneforge.models.generate import render_prompt
from tuneforge.serve.protocol import (
    ChatCompletion, ChatCompletionChunk, Completion, ErrorResponse, Health, ModelList,
)

QUESTION = [{"role": "user", "content": "What is 2 plus 2?"}]


@pytest.fixture(scope="module")
def live(tiny_served):
    with running(tiny_served) as live:
        yield live


@pytest.fixture(scope="module")
def reference(tiny_served):
    """Greedy replies straight from `generate`, to compare the server's with."""

    def reply(messages: list[dict], max_tokens: int) -> str:
        model, tokenizer = tiny_served.model, tiny_served.tokenizer
        prompt = tokenizer.encode(render_prompt(tokenizer, messages), add_special_tokens=False)
        with torch.inference_mode():
            output = model.generate(torch.tensor([prompt]), max_new_tokens=max_tokens, do_sample=False,
                                    pad_token_id=tokenizer.pad_token_id)
        return tokenizer.decode(output[0, len(prompt):], skip_special_tokens=True)

    return reply


def test_chat_completion(live, tiny_served, reference):
    client = live.client()
    response = client.chat.completions.create(model=tiny_served.default, messages=QUESTION, max_tokens=12, temperature=0)
    choice = response.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == reference(QUESTION, 12)
    assert choice.finish_reason in ("stop", "length")
    tokenizer = tiny_served.tokenizer
    prompt_tokens = len(tokenizer.encode(render_prompt(tokenizer, QUESTION), add_special_tokens=False))
    assert response.usage.prompt_tokens == prompt_tokens
    assert 1 <= response.usage.completion_tokens <= 12
    assert response.usage.total_tokens == prompt_tokens + response.usage.completion_tokens
    assert response.model == tiny_served.default and response.object == "chat.completion"
    raw = live.post("/v1/chat/completions", chat("hi", max_tokens=5))
    assert raw.status_code == 200
    ChatCompletion.model_validate_json(raw.text)


def test_chat_stream(live, tiny_served, reference):
    client = live.client()
    chunks = list(client.chat.completions.create(messages=QUESTION, max_tokens=12, temperature=0, stream=True,
                                                 stream_options={"include_usage": True}, model=tiny_served.default))
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == reference(QUESTION, 12)
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals in (["stop"], ["length"])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1
    assert len({c.id for c in chunks}) == 1
    raw = live.post("/v1/chat/completions", chat("hi", max_tokens=6, stream=True))
    assert raw.headers["content-type"].startswith("text/event-stream")
    payloads = sse_payloads(raw.text)
    assert len(payloads) >= 3
    for payload in payloads:
        ChatCompletionChunk.model_validate(payload)


def test_text_completions_several_prompts_n_and_echo(live, tiny_served):
    client = live.client()
    response = client.completions.create(model=tiny_served.default, prompt=["Once upon", "def main():"], n=2,
                                         max_tokens=6, temperature=0.8, seed=3, echo=True)
    assert [c.index for c in response.choices] == [0, 1, 2, 3]
    assert response.choices[0].text.startswith("Once upon") and response.choices[3].text.startswith("def main():")
    assert response.usage.completion_tokens <= 4 * 6
    streamed = list(client.completions.create(model=tiny_served.default, prompt="Once upon", max_tokens=6,
                                              temperature=0, stream=True))
    plain = client.completions.create(model=tiny_served.default, prompt="Once upon", max_tokens=6, temperature=0)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == plain.choices[0].text
    assert streamed[-1].choices[0].finish_reason == plain.choices[0].finish_reason
    raw = live.post("/v1/completions", {"prompt": "hello", "max_tokens": 3})
    Completion.model_validate_json(raw.text)
    for payload in sse_payloads(live.post("/v1/completions", {"prompt": "hello", "max_tokens": 3, "stream": True}).text):
        Completion.model_validate(payload)


def test_models_list_retrieve_and_unknown_model(live, tiny_served):
    client = live.client()
    assert [m.id for m in client.models.list()] == [tiny_served.default]
    assert client.models.retrieve(tiny_served.default).id == tiny_served.default
    ModelList.model_validate_json(live.get("/v1/models").text)
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=QUESTION)
    assert "no-such-model" in caught.value.message
    assert caught.value.code == "model_not_found" and caught.value.param == "model"
    ErrorResponse.model_validate_json(live.post("/v1/chat/completions", chat("hi", model="nope")).text)


def test_a_request_without_model_gets_the_main_model(live, tiny_served):
    raw = live.post("/v1/chat/completions", chat("hi", max_tokens=2))
    assert ChatCompletion.model_validate_json(raw.text).model == tiny_served.default


def test_seed_repeats_and_stop_strings_cut(live, tiny_served):
    client = live.client()

    def ask(**fields):
        return client.chat.completions.create(model=tiny_served.default, messages=QUESTION, max_tokens=16, **fields)

    first, second = ask(temperature=1.0, seed=99), ask(temperature=1.0, seed=99)
    assert first.choices[0].message.content == second.choices[0].message.content
    several = ask(temperature=1.0, seed=5, n=3)
    assert len({c.message.content for c in several.choices}) > 1
    text = ask(temperature=0).choices[0].message.content
    stop = text[len(text) // 2: len(text) // 2 + 2]
    cut = ask(temperature=0, stop=[stop, "never-appears"])
    assert cut.choices[0].message.content == text[: text.find(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = ask(temperature=0, stop=stop, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == text[: text.find(stop)]


def test_concurrent_requests_are_decoded_together(live, tiny_served, reference):
    """Eight requests queued behind a held forward pass join one batch; each gets its own answer."""
    client = live.client()
    questions = [[{"role": "user", "content": f"What is {i} plus {i}?"}] for i in range(8)]
    answers = {}
    steps, rows = live.engine.stats.decode_steps, live.engine.stats.decoded_rows

    def ask(i):
        answers[i] = client.chat.completions.create(model=tiny_served.default, messages=questions[i], max_tokens=10,
                                                    temperature=0).choices[0].message.content

    with gated(live.engine) as gate:
        threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        wait_until(lambda: live.state.in_flight == 8)
        gate.set()
        for thread in threads:
            thread.join(30)
    assert all(answers[i] == reference(questions[i], 10) for i in range(8))
    mean_batch = (live.engine.stats.decoded_rows - rows) / (live.engine.stats.decode_steps - steps)
    assert mean_batch > 4


def test_health_metrics_and_chat_page(live):
    live.client().chat.completions.create(model=live.state.served.default, messages=QUESTION, max_tokens=3)
    health = live.get("/health")
    assert health.status_code == 200 and Health.model_validate(health.json()).status == "ok"
    metrics = live.get("/metrics").text
    for line in ('tuneforge_requests_total{endpoint="/v1/chat/completions",status="200"}',
                 "tuneforge_request_latency_seconds_bucket", "tuneforge_time_to_first_token_seconds_count",
                 "tuneforge_prompt_tokens_total", "tuneforge_completion_tokens_total", "tuneforge_queue_depth",
                 "tuneforge_running_sequences", "tuneforge_requests_in_flight", "tuneforge_decode_steps_total"):
        assert line in metrics, line
    page = live.get("/")
    assert page.status_code == 200 and "<title>tuneforge</title>" in page.text and 'data-tab="chat"' in page.text
    script = live.get("/dashboard/static/chat.js").text  # the dashboard's chat tab streams from the chat API
    assert "/v1/chat/completions" in script and "stream: true" in script


def test_classify_on_a_language_model_is_a_404_that_says_so(live, tiny_served):
    raw = live.post("/v1/classify", {"input": "hi"})
    assert raw.status_code == 404
    message = raw.json()["error"]["message"]
    assert "serves no classifier" in message and tiny_served.default in message and "task: classify" in message
