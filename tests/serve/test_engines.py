"""`tuneforge serve --engine`: the engines behind one API, and the vLLM engine's lifecycle against a stand-in vLLM server.

The stand-in is a small OpenAI-style server importable as `vllm.entrypoints.openai.api_server` (written into a
temporary directory on PYTHONPATH), so start, forwarding, streaming, crash -> 503 -> restart and shutdown are
tested where vLLM is not installed. tests/integration/test_fast_engines.py runs the real engines when present.
"""

from __future__ import annotations

import sys
import textwrap
import threading
import time

import pytest

from tests.serve.conftest import STAND_IN_SERVER, check_promote_swaps_child_engine, running
from tuneforge.errors import ConfigError
from tuneforge.serve.engine import Delta, Done, Engine, Request, SamplingParams
from tuneforge.serve.engines.api import EngineUnavailable, GenerationEngine, Unavailable
from tuneforge.serve.options import ServeOptions

FAKE_VLLM = STAND_IN_SERVER + '''
"""A stand-in for vLLM's OpenAI server: streams "w0 w1 ..." for /v1/completions; max_tokens 13 kills the process."""
import argparse, json, os, sys

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int)
parser.add_argument("--model")
args, _ = parser.parse_known_args()
TAG = os.path.basename(args.model)[:6] if os.environ.get("FAKE_VLLM_ECHO_MODEL") else "w"
with open(os.environ["FAKE_VLLM_ARGS"], "a") as out:
    out.write(json.dumps(sys.argv[1:]) + "\\n")


class Handler(StandInHandler):
    def do_POST(self):
        body = self.body()
        if not isinstance(body["prompt"], list) or body["model"] != "tuneforge-served":
            self.send_response(400)
            self.end_headers()
            self.wfile.write(b"bad request")
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        total = 0
        for i in range(body["max_tokens"]):
            for choice in range(body.get("n", 1)):
                if body["max_tokens"] == 13 and i == 2:
                    self.wfile.flush()
                    os._exit(3)
                total += 1
                last = i == body["max_tokens"] - 1
                chunk = {"choices": [{"index": choice, "text": f"{TAG}{i} ", "finish_reason": "length" if last else None}]}
                if body["stream_options"].get("continuous_usage_stats"):
                    chunk["usage"] = {"prompt_tokens": len(body["prompt"]), "completion_tokens": total}
                self.wfile.write(f"data: {json.dumps(chunk)}\\n\\n".encode())
                self.wfile.flush()
        usage = {"prompt_tokens": len(body["prompt"]), "completion_tokens": total}  # as vLLM: one last usage chunk
        self.wfile.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\\n\\n".encode())
        self.wfile.write(b"data: [DONE]\\n\\n")


serve(Handler, args.port)
'''


@pytest.fixture
def fake_vllm(tmp_path, monkeypatch):
    """PYTHONPATH with the stand-in `vllm` package; returns the file each start appends its arguments to."""
    package = tmp_path / "fake" / "vllm" / "entrypoints" / "openai"
    package.mkdir(parents=True)
    for directory in (package, package.parent, package.parent.parent):
        (directory / "__init__.py").write_text("")
    (package / "api_server.py").write_text(textwrap.dedent(FAKE_VLLM))
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path / 'fake'}:{sys.path[0]}")
    monkeypatch.setenv("FAKE_VLLM_ARGS", str(tmp_path / "args.jsonl"))
    return tmp_path / "args.jsonl"


class Collect:
    def __init__(self):
        self.events, self.done = [], threading.Event()

    def __call__(self, event):
        self.events.append(event)
        if not isinstance(event, Delta):
            self.done.set()

    @property
    def text(self) -> str:
        return "".join(e.text for e in self.events if isinstance(e, Delta))


def submit(engine, max_tokens: int, n: int = 1) -> Collect:
    sink = Collect()
    engine.submit(Request([5, 6, 7], SamplingParams(max_tokens, temperature=0.0), sink, n=n))
    assert sink.done.wait(60), sink.events
    if n > 1:  # the first Done set the event; wait for the rest
        deadline = time.monotonic() + 30
        while sum(isinstance(e, Done) for e in sink.events) < n and time.monotonic() < deadline:
            time.sleep(0.02)
    return sink


def test_every_engine_meets_the_protocol_the_routes_use():
    from tuneforge.serve.engines.llamacpp import LlamaCppEngine
    from tuneforge.serve.engines.vllm import VllmEngine

    members = [name for name in dir(GenerationEngine) if not name.startswith("_")]
    assert set(members) == {"start", "submit", "shutdown", "alive", "queue_depth", "running"}
    for engine_class in (Engine, LlamaCppEngine, VllmEngine):
        assert all(hasattr(engine_class, name) for name in members), engine_class


def test_a_missing_engine_names_what_to_install(tiny_model, monkeypatch):
    from tuneforge.serve.engines.select import build_engine
    from tuneforge.serve.served import load_served

    monkeypatch.delenv("TUNEFORGE_VLLM_PYTHON", raising=False)
    served = load_served(str(tiny_model))
    with pytest.raises(ConfigError, match="--engine vllm needs vLLM.*TUNEFORGE_VLLM_PYTHON"):
        build_engine(served, ServeOptions(engine="vllm", vllm_python=sys.executable))
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if llama-cpp-python were not installed
    with pytest.raises(ConfigError, match=r"--engine llama.cpp needs llama-cpp-python.*tuneforge\[llamacpp\]"):
        build_engine(load_served(str(tiny_model)), ServeOptions(engine="llama.cpp"))
    with pytest.raises(ValueError, match="engine must be"):
        ServeOptions(engine="tgi")


def test_vllm_engine_streams_restarts_after_a_crash_and_shuts_down(fake_vllm, tmp_path):
    from tuneforge.serve.engines.vllm import VllmEngine

    engine = VllmEngine(sys.executable, tmp_path, [2], max_model_len=64, startup_timeout_s=60)
    engine.start()
    try:
        sink = submit(engine, 4)
        assert sink.text == "w0 w1 w2 w3 " and sink.events[-1] == Done(0, "length", 4)
        two = submit(engine, 3, n=2)
        assert sorted(e.completion_tokens for e in two.events if isinstance(e, Done)) == [3, 3]

        first_process = engine.process
        crashed = submit(engine, 13)  # the stand-in dies mid-stream
        assert isinstance(crashed.events[-1], Unavailable), crashed.events
        assert "exited unexpectedly (code 3)" in crashed.events[-1].message
        refused = 0
        deadline = time.monotonic() + 60
        while engine.problem is not None:  # restarting: new requests get a clear 503
            with pytest.raises(EngineUnavailable, match="restarting"):
                engine.submit(Request([1], SamplingParams(2), Collect()))
            refused += 1
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert engine.restarts == 1 and engine.process is not first_process
        assert submit(engine, 2).text == "w0 w1 "
    finally:
        assert engine.shutdown(10)
    assert engine.process.poll() is not None  # the child is gone
    arguments = fake_vllm.read_text().splitlines()
    assert len(arguments) == 2 and '"--max-model-len", "64"' in arguments[0]


def test_the_http_layer_is_the_same_over_the_vllm_engine(fake_vllm, tiny_model, tmp_path):
    """Auth, the request log, /v1/models and errors as with the built-in engine; a crash is a 503 to the client."""
    import openai

    from tuneforge.serve.served import load_served

    served = load_served(str(tiny_model))
    with running(served, engine="vllm", vllm_python=sys.executable, api_keys=("k",), log_db=tmp_path / "log.db") as live:
        client = live.client("k")
        assert [m.id for m in client.models.list().data] == [str(tiny_model)]
        reply = client.chat.completions.create(model=str(tiny_model), messages=[{"role": "user", "content": "Hi"}],
                                               max_tokens=3)
        assert reply.choices[0].message.content == "w0 w1 w2 " and reply.usage.completion_tokens == 3
        chunks = list(client.completions.create(model=str(tiny_model), prompt="Hi", max_tokens=2, stream=True))
        assert "".join(c.choices[0].text for c in chunks if c.choices) == "w0 w1 "
        with pytest.raises(openai.AuthenticationError):
            live.client("wrong").models.list()
        with pytest.raises(openai.APIStatusError) as crash:
            client.completions.create(model=str(tiny_model), prompt="Hi", max_tokens=13)
        assert crash.value.status_code == 503 and "vLLM" in crash.value.message
    import sqlite3

    with sqlite3.connect(tmp_path / "log.db") as conn:
        statuses = [row[0] for row in conn.execute("SELECT status FROM requests ORDER BY created")]
    assert statuses == [200, 200, 503]


def test_a_registry_promote_swaps_the_vllm_engine(fake_vllm, tiny_model, tmp_path, monkeypatch):
    """serve registry:production --engine vllm: a promote starts a vLLM child on the new version's export, swaps it
    in, and stops the old child once it has drained."""
    monkeypatch.setenv("FAKE_VLLM_ECHO_MODEL", "1")
    check_promote_swaps_child_engine(tiny_model, tmp_path, {"engine": "vllm", "vllm_python": sys.executable})
