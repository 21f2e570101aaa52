"""Issue 22 case 3: one request's values can never fail the other requests it shares a batch with.

The protocol refuses a seed outside int64 (OpenAI's documented range) with a 400 naming `seed`; and
whatever still fails while one request's sequences are set up, sampled or streamed fails that request
alone, while the rest of the batch finishes.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from tests.serve.conftest import chat, gated, running, wait_until
from tests.serve.test_engine import Collector
from tuneforge.models.sampling import RowSampling
from tuneforge.serve.decoding import TextStream
from tuneforge.serve.engine import Done, Engine, Failed, Request, SamplingParams, Sequence


@pytest.fixture(scope="module")
def live(tiny_served):
    with running(tiny_served, max_new_tokens=32) as server:
        yield server


@pytest.mark.parametrize("seed", [10**23, 2**63, -(2**63) - 1, 2**64])
def test_a_seed_outside_int64_is_a_400_naming_seed(live, seed):
    response = live.post("/v1/chat/completions", chat("hello", seed=seed, max_tokens=2))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "seed"


@pytest.mark.parametrize("seed", [2**63 - 1, -(2**63), 0])
def test_seeds_at_the_ends_of_int64_are_answered_for_every_choice(live, seed):
    response = live.post("/v1/chat/completions", chat("hello", seed=seed, max_tokens=3, n=3))
    assert response.status_code == 200, response.text
    assert len(response.json()["choices"]) == 3


def test_a_bad_request_in_the_batch_does_not_fail_the_others(live):
    """The battery's case: three clients decoding together with one that sends a huge seed."""
    with gated(live.engine) as gate, ThreadPoolExecutor(4) as pool:
        prefills = live.engine.stats.prefills
        post = lambda i: pool.submit(live.post, "/v1/chat/completions", chat(f"hello {i}", max_tokens=8, temperature=1.0))  # noqa: E731
        good = [post(0)]  # held at the gate before the others start: on a busy CPU all three could share one prefill
        wait_until(lambda: live.engine.stats.prefills > prefills, 30)
        good += [post(1), post(2)]
        bad = pool.submit(live.post, "/v1/chat/completions", chat("hello", seed=10**23, max_tokens=8))
        wait_until(lambda: live.engine.queue_depth >= 3 or (bad.done() and live.engine.queue_depth >= 2), 30)
        gate.set()
        assert bad.result().status_code == 400
        assert [f.result().status_code for f in good] == [200, 200, 200]


def test_a_request_the_engine_cannot_seed_fails_alone(loaded_engine_parts):
    """Past the protocol (an engine used directly): the generator refuses the seed, only its request fails."""
    model, tokenizer = loaded_engine_parts
    engine = Engine(model, tokenizer, max_batch_size=8)
    prompt = tokenizer.encode("hello there")
    good = [Collector() for _ in range(3)]
    bad = Collector(choices=2)
    for i, sink in enumerate(good):  # queued before the engine starts: all admitted in one prefill
        engine.submit(Request(prompt, SamplingParams(max_tokens=6, temperature=1.0, seed=i), sink))
    engine.submit(Request(prompt, SamplingParams(max_tokens=6, temperature=1.0, seed=10**23), bad, n=2))
    engine.start()
    try:
        assert "Overflow" in bad.wait().events[-1].message and isinstance(bad.events[-1], Failed)
        for sink in good:
            assert isinstance(sink.wait().events[-1], Done)
    finally:
        engine.shutdown(10)


def test_a_row_that_fails_to_sample_fails_only_its_request(loaded_engine_parts):
    model, tokenizer = loaded_engine_parts
    engine = Engine(model, tokenizer)
    sinks = [Collector() for _ in range(3)]
    params = SamplingParams(max_tokens=4, temperature=1.0)
    rows = [Sequence(Request([1], params, sink), 0, TextStream(tokenizer, ()),
                     RowSampling(1.0, 1.0, torch.Generator() if i != 1 else "not a generator"))
            for i, sink in enumerate(sinks)]
    tokens = engine._choose(torch.randn(3, model.config.vocab_size), rows)
    assert len(tokens) == 3
    assert isinstance(sinks[1].events[-1], Failed) and rows[1].request.cancelled
    assert not sinks[0].events and not sinks[2].events
    assert engine._advance(rows, tokens) == [0, 2]  # the failed row leaves the batch, the others stay


def test_a_row_whose_stream_fails_leaves_alone(loaded_engine_parts):
    model, tokenizer = loaded_engine_parts
    engine = Engine(model, tokenizer)

    class Broken(TextStream):
        def add(self, token):
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "simulated")

    sinks = [Collector() for _ in range(2)]
    params = SamplingParams(max_tokens=4, temperature=0.0)
    rows = [Sequence(Request([1], params, sinks[0]), 0, TextStream(tokenizer, ()), RowSampling(0.0, 1.0, None)),
            Sequence(Request([1], params, sinks[1]), 0, Broken(tokenizer, ()), RowSampling(0.0, 1.0, None))]
    assert engine._advance(rows, [5, 5]) == [0]
    assert isinstance(sinks[1].events[-1], Failed) and "simulated" in sinks[1].events[-1].message


@pytest.fixture(scope="module")
def loaded_engine_parts(tiny_model):
    from tuneforge.models.load import load_for_inference

    return load_for_inference(str(tiny_model))


def test_prompt_plus_max_tokens_beyond_the_models_context_is_a_400(tiny_served):
    """Case 2's server half: the tiny model has 512 positions, whatever the server's own limits allow."""
    assert tiny_served.context_length == 512
    with running(tiny_served, max_prompt_tokens=2000, max_new_tokens=2000) as server:
        prompt = "word " * 100
        response = server.post("/v1/completions", {"prompt": prompt, "max_tokens": 500})
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == "max_tokens" and error["code"] == "context_length_exceeded"
        assert "the model's context of 512 tokens" in error["message"]
        fits = server.post("/v1/completions", {"prompt": prompt, "max_tokens": 5})
        assert fits.status_code == 200, fits.text
