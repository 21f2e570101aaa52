"""Torch threads in a server (serve/threads.py): the thread that runs the model takes them, the loading threads none."""

from __future__ import annotations

import threading

import pytest
import torch

from tuneforge.errors import TuneforgeError
from tuneforge.serve import threads
from tuneforge.serve.engine import Engine, Request, SamplingParams
from tests.serve.test_engine import Collector


@pytest.fixture
def restored_threads():
    before = torch.get_num_threads()
    yield before
    torch.set_num_threads(before)


def test_the_main_thread_goes_serial_and_the_engine_thread_takes_the_threads(tiny_served, restored_threads):
    wanted = restored_threads + 1  # a count the main thread does not have: seen only where it was taken
    assert threads.for_the_engine(wanted) == wanted and torch.get_num_threads() == 1
    assert threads.for_the_engine(None) == 1  # the default is what this thread has: already serial here
    seen: list[int] = []
    engine = Engine(tiny_served.model, tiny_served.tokenizer, threads=wanted)
    forward = engine._forward
    engine._forward = lambda *args: (seen.append(torch.get_num_threads()), forward(*args))[1]
    engine.start()
    try:
        sink = Collector()
        engine.submit(Request(tiny_served.tokenizer.encode("hello"), SamplingParams(max_tokens=3, temperature=0), sink))
        assert sink.finished.wait(60)
    finally:
        engine.shutdown(30)
    assert seen and set(seen) == {wanted}
    assert torch.get_num_threads() == 1  # each thread's count is its own once set: the main thread stays serial


def test_a_thread_that_sets_nothing_keeps_what_it_has(restored_threads):
    seen = []
    worker = threading.Thread(target=lambda: (threads.take(None), seen.append(torch.get_num_threads())))
    worker.start()
    worker.join()
    assert seen == [restored_threads]


def test_a_serve_start_that_fails_to_load_leaves_the_threads_as_asked(tmp_path, restored_threads):
    from rich.console import Console

    from tuneforge.cli import build_parser
    from tuneforge.serve.commands import load_for_serving, options_from

    args = build_parser().parse_args(["serve", str(tmp_path / "no-model-here"), "--threads", "2", "--no-log"])
    with pytest.raises(TuneforgeError, match="not found"):
        load_for_serving(args, options_from(args), Console(stderr=True, quiet=True))
    assert torch.get_num_threads() == 2
