"""The batching engine on the tiny model: same answers as `generate`, joins and leaves, n, seeds, cancel, drain."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from tuneforge.errors import ModelError
from tuneforge.models.batched_decode import Batch, left_pad, merge, position_ids
from tuneforge.serve.engine import Delta, Done, Engine, EngineClosed, Failed, Request, SamplingParams


class Collector:
    """A thread-safe sink that keeps a request's events and signals when `choices` are done."""

    def __init__(self, choices: int = 1):
        self.events, self.choices, self.finished = [], choices, threading.Event()

    def __call__(self, event):
        self.events.append(event)
        if isinstance(event, Failed) or sum(isinstance(e, Done) for e in self.events) == self.choices:
            self.finished.set()

    def text(self, choice: int = 0) -> str:
        return "".join(e.text for e in self.events if isinstance(e, Delta) and e.choice == choice)

    def done(self, choice: int = 0) -> Done:
        return next(e for e in self.events if isinstance(e, Done) and e.choice == choice)

    def wait(self, timeout: float = 30) -> Collector:
        assert self.finished.wait(timeout), "request did not finish"
        return self


@pytest.fixture(scope="module")
def loaded(tiny_model):
    from tuneforge.models.load import load_for_inference

    return load_for_inference(str(tiny_model))


@pytest.fixture
def engine(loaded):
    model, tokenizer = loaded
    engine = Engine(model, tokenizer, max_batch_size=8)
    engine.start()
    yield engine
    engine.shutdown(10)


PROMPTS = ["hello there", "What is 2 plus 2? Tell me", "a", "import torch\nfrom x import y", "def f(x):\n    return"]


def greedy_reference(model, tokenizer, prompt: list[int], max_tokens: int, stops) -> str:
    output = model.generate(torch.tensor([prompt]), max_new_tokens=max_tokens, do_sample=False,
                            eos_token_id=sorted(stops), pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(output[0, len(prompt):], skip_special_tokens=True)


def test_batched_greedy_answers_equal_generate_while_requests_join_and_leave(engine, loaded):
    model, tokenizer = loaded
    prompts = [tokenizer.encode(p) for p in PROMPTS]
    collectors = []
    for i, prompt in enumerate(prompts):
        if collectors:  # join a batch that is already decoding
            previous = collectors[-1]
            deadline = time.monotonic() + 10
            while sum(isinstance(e, Delta) for e in previous.events) < 2 and not previous.finished.is_set():
                assert time.monotonic() < deadline
                time.sleep(0.001)
        collectors.append(Collector())
        engine.submit(Request(prompt, SamplingParams(max_tokens=12 + 4 * i, temperature=0), collectors[-1]))
    for i, (prompt, collector) in enumerate(zip(prompts, collectors)):
        collector.wait()
        assert collector.text() == greedy_reference(model, tokenizer, prompt, 12 + 4 * i, engine.stop_ids), PROMPTS[i]
        assert collector.done().completion_tokens <= 12 + 4 * i
    assert engine.stats.prefills >= 2
    assert engine.stats.decoded_rows > engine.stats.decode_steps  # some steps decoded several rows


def test_joined_rows_get_the_logits_they_get_alone(loaded):
    """Left padding, merged caches and mask-derived positions must not change a row's logits."""
    model, tokenizer = loaded
    engine = Engine(model, tokenizer)
    short, long = tokenizer.encode("hi"), tokenizer.encode("a much longer prompt than the other one")

    def prefill(prompts):
        ids, mask = left_pad(prompts, engine.pad_id, engine.device)
        cache = engine.new_cache()
        logits = engine._forward(ids, mask, position_ids(mask), cache, [None] * len(prompts))
        return Batch([], cache, mask, logits.argmax(-1)), logits

    def step(batch):
        mask = torch.cat([batch.mask, batch.mask.new_ones(len(batch.mask), 1)], dim=1)
        return engine._forward(batch.pending[:, None], mask, batch.mask.sum(1, keepdim=True), batch.cache,
                               [None] * len(batch.mask))

    with torch.inference_mode():
        alone_short, first_short = prefill([short])
        alone_long, first_long = prefill([long])
        together = merge(*[prefill([p])[0] for p in (short, long)])
        expected = torch.cat([step(alone_short), step(alone_long)])
        torch.testing.assert_close(step(together), expected, atol=1e-5, rtol=1e-4)
        padded, logits = prefill([short, long])
        torch.testing.assert_close(logits, torch.cat([first_short, first_long]), atol=1e-5, rtol=1e-4)


def test_n_choices_with_a_seed_repeat_and_differ_from_each_other(engine, loaded):
    _, tokenizer = loaded
    params = SamplingParams(max_tokens=16, temperature=1.0, seed=1234)
    runs = []
    for _ in range(2):
        collector = Collector(choices=3)
        engine.submit(Request(tokenizer.encode("tell me"), params, collector, n=3))
        runs.append([collector.wait().text(c) for c in range(3)])
    assert runs[0] == runs[1]
    assert len(set(runs[0])) > 1


def test_stop_string_and_max_tokens_end_a_reply(engine, loaded):
    _, tokenizer = loaded
    prompt = tokenizer.encode("import torch\nfrom x import y")
    full = Collector()
    engine.submit(Request(prompt, SamplingParams(max_tokens=20, temperature=0), full))
    text = full.wait().text()
    assert full.done().finish_reason == "length" and full.done().completion_tokens == 20
    stop = text[len(text) // 2: len(text) // 2 + 3]
    cut = Collector()
    engine.submit(Request(prompt, SamplingParams(max_tokens=20, temperature=0, stop=(stop,)), cut))
    assert cut.wait().text() == text[: text.find(stop)]
    assert cut.done().finish_reason == "stop"


def test_cancelled_request_leaves_the_batch(engine, loaded):
    _, tokenizer = loaded
    collector = Collector()
    request = Request(tokenizer.encode("hello"), SamplingParams(max_tokens=400, temperature=0), collector)
    engine.submit(request)
    deadline = time.monotonic() + 10
    while not collector.events:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    request.cancel()
    deadline = time.monotonic() + 10
    while engine.running:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    assert not any(isinstance(e, Done) for e in collector.events)


def test_without_batching_one_request_runs_at_a_time(loaded):
    model, tokenizer = loaded
    engine = Engine(model, tokenizer, max_batch_size=8, batching=False)
    collectors = [Collector() for _ in range(3)]
    for prompt, collector in zip(PROMPTS, collectors):  # queued before the engine starts: all waiting together
        engine.submit(Request(tokenizer.encode(prompt), SamplingParams(max_tokens=8, temperature=0), collector))
    engine.start()
    for prompt, collector in zip(PROMPTS, collectors):
        assert collector.wait().text() == greedy_reference(model, tokenizer, tokenizer.encode(prompt), 8, engine.stop_ids)
    assert engine.stats.prefills == 3
    assert engine.stats.decoded_rows == engine.stats.decode_steps
    assert engine.shutdown(10)


def test_shutdown_finishes_admitted_requests_and_refuses_new_ones(loaded):
    model, tokenizer = loaded
    engine = Engine(model, tokenizer)
    collectors = [Collector() for _ in range(3)]
    for collector in collectors:
        engine.submit(Request(tokenizer.encode("hello"), SamplingParams(max_tokens=10, temperature=0), collector))
    engine.start()
    assert engine.shutdown(30)
    assert all(c.finished.is_set() and c.done().finish_reason in ("stop", "length") for c in collectors)
    with pytest.raises(EngineClosed):
        engine.submit(Request([1, 2], SamplingParams(max_tokens=1), Collector()))


def test_a_failing_forward_pass_fails_its_requests_and_the_engine_goes_on(engine, loaded, monkeypatch):
    _, tokenizer = loaded
    forward = engine._forward
    calls = []

    def broken_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("out of memory (simulated)")
        return forward(*args, **kwargs)

    monkeypatch.setattr(engine, "_forward", broken_once)
    failed = Collector()
    engine.submit(Request(tokenizer.encode("hello"), SamplingParams(max_tokens=5, temperature=0), failed))
    assert isinstance(failed.wait().events[-1], Failed)
    assert "out of memory (simulated)" in failed.events[-1].message
    fine = Collector()
    engine.submit(Request(tokenizer.encode("hello"), SamplingParams(max_tokens=5, temperature=0), fine))
    assert fine.wait().done().finish_reason in ("stop", "length")
    assert engine.stats.failures == 1


def test_models_with_sliding_window_layers_are_refused(chatml_tokenizer):
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(vocab_size=len(chatml_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, num_key_value_heads=1, sliding_window=16)
    with pytest.raises(ModelError, match="full-attention"):
        Engine(MistralForCausalLM(config).eval(), chatml_tokenizer)
