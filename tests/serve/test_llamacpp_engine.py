"""`--engine llama.cpp` as a child server: what a request becomes, and its lifecycle against a stand-in llama-server.

The stand-in is an executable script taking llama-server's flags: it streams "s<seed>-<i> " for /v1/completions
as llama-server does (the finishing chunk carries the usage), records each request body, closes the
connection without an answer the first time it is asked for 11 tokens, and dies when asked for 13. The shared lifecycle (child_server.py) is tested here through llama.cpp's side as
tests/serve/test_engines.py tests it through vLLM's; tests/integration/test_fast_engines.py runs the real servers.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time

import pytest

from tests.serve.conftest import STAND_IN_SERVER, check_promote_swaps_child_engine
from tests.serve.test_engines import Collect
from tuneforge.errors import ConfigError
from tuneforge.serve.engine import Delta, Done, Request, SamplingParams
from tuneforge.serve.engines.api import EngineUnavailable, Unavailable
from tuneforge.serve.engines.llamacpp import SERVER_MODULES, LlamaCppEngine, installed, llama_server
from tuneforge.serve.options import ServeOptions

FAKE_LLAMA_SERVER = STAND_IN_SERVER + '''
"""A stand-in for llama.cpp's llama-server."""
import argparse, json, os, sys

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int)
parser.add_argument("--alias")
parser.add_argument("--model")
args, _ = parser.parse_known_args()
TAG = os.path.basename(os.path.dirname(args.model))[:6] if os.environ.get("FAKE_LLAMA_ECHO_MODEL") else "s"
with open(os.environ["FAKE_LLAMA_LOG"], "a") as out:
    out.write(json.dumps({"argv": sys.argv[1:]}) + "\\n")


class Handler(StandInHandler):
    def do_POST(self):
        body = self.body()
        with open(os.environ["FAKE_LLAMA_LOG"], "a") as out:
            out.write(json.dumps({"body": body}) + "\\n")
        dropped = os.environ["FAKE_LLAMA_LOG"] + ".dropped"
        if body["max_tokens"] == 11 and not os.path.exists(dropped):  # as llama-server closing a kept-alive connection
            open(dropped, "w").close()
            self.close_connection = True
            return
        if body["model"] != args.alias or not all(isinstance(t, int) for t in body["prompt"]):
            self.send_response(400)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for i in range(body["max_tokens"]):
            if body["max_tokens"] == 13 and i == 2:
                self.wfile.flush()
                os._exit(3)
            chunk = {"choices": [{"index": 0, "text": f"{TAG}{body['seed']}-{i} ", "finish_reason": None}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\\n\\n".encode())
        usage = {"prompt_tokens": len(body["prompt"]), "completion_tokens": body["max_tokens"]}
        last = {"choices": [{"index": 0, "text": "", "finish_reason": "length"}], "usage": usage}
        self.wfile.write(f"data: {json.dumps(last)}\\n\\n".encode())
        self.wfile.write(b"data: [DONE]\\n\\n")


serve(Handler, args.port)
'''


@pytest.fixture
def fake_llama_server(tmp_path, monkeypatch):
    """An executable stand-in llama-server; returns (its path, the file it logs arguments and bodies to)."""
    script = tmp_path / "llama-server"
    script.write_text(f"#!{sys.executable}\n" + textwrap.dedent(FAKE_LLAMA_SERVER))
    script.chmod(0o755)
    monkeypatch.setenv("FAKE_LLAMA_LOG", str(tmp_path / "log.jsonl"))
    return script, tmp_path / "log.jsonl"


def records(path, key: str) -> list:
    return [entry[key] for entry in map(json.loads, path.read_text().splitlines()) if key in entry]


def submit(engine, max_tokens: int, n: int = 1, seed: int | None = 7) -> Collect:
    sink = Collect()
    engine.submit(Request([5, 6, 7], SamplingParams(max_tokens, temperature=0.5, seed=seed), sink, n=n))
    deadline = time.monotonic() + 60
    while not any(type(e).__name__ in ("Failed", "Unavailable") for e in sink.events) \
            and sum(isinstance(e, Done) for e in sink.events) < n:
        assert time.monotonic() < deadline, sink.events
        time.sleep(0.02)
    return sink


def test_llama_server_streams_one_call_per_choice_restarts_after_a_crash_and_shuts_down(fake_llama_server, tmp_path):
    script, log = fake_llama_server
    engine = LlamaCppEngine(str(script), tmp_path / "model.gguf", None, n_ctx=64, parallel=4, threads=2,
                            suppressed=[9], startup_timeout_s=60)
    engine.start()
    try:
        one = submit(engine, 3)
        assert one.text == "s7-0 s7-1 s7-2 " and one.events[-1] == Done(0, "length", 3)  # the count is the usage's
        two = submit(engine, 2, n=2)
        assert sorted(e.text for e in two.events if isinstance(e, Delta) and e.choice == 1) == ["s8-0 ", "s8-1 "]
        assert sorted((e.choice, e.completion_tokens) for e in two.events if isinstance(e, Done)) == [(0, 2), (1, 2)]
        body = records(log, "body")[0]
        assert body["prompt"] == [5, 6, 7] and body["samplers"] == ["temperature", "top_p"]
        assert (body["top_k"], body["min_p"], body["repeat_penalty"]) == (0, 0.0, 1.0)  # llama.cpp's defaults off
        assert body["logit_bias"] == [[9, False]]
        assert engine.stats.generated_tokens == 3 + 2 * 2
        assert submit(engine, 11).events[-1] == Done(0, "length", 11)  # a dropped connection is tried once more

        first_process = engine.process
        crashed = submit(engine, 13)
        assert isinstance(crashed.events[-1], Unavailable), crashed.events
        assert "the llama-server exited unexpectedly (code 3)" in crashed.events[-1].message
        deadline = time.monotonic() + 60
        while engine.problem is not None:  # restarting: new requests get a clear 503
            with pytest.raises(EngineUnavailable, match="llama.cpp engine is not available.*restarting"):
                engine.submit(Request([1], SamplingParams(2), Collect()))
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert engine.restarts == 1 and engine.process is not first_process
        assert submit(engine, 2, seed=1).text == "s1-0 s1-1 "
    finally:
        assert engine.shutdown(10)
    assert engine.process.poll() is not None
    argv = records(log, "argv")
    assert len(argv) == 2
    flags = {flag: value for flag, value in zip(argv[0], argv[0][1:]) if flag.startswith("--")}
    assert (flags["--parallel"], flags["--ctx-size"], flags["--threads"]) == ("4", "256", "2")  # 64 tokens per slot


def test_llama_cpp_python_server_gets_the_prompt_as_text_and_one_slot(tiny_served, tmp_path):
    tokenizer = tiny_served.tokenizer
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi there"}], add_generation_prompt=True,
                                         tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    engine = LlamaCppEngine(None, tmp_path / "model.gguf", tokenizer, n_ctx=64, parallel=8, suppressed=[9])
    assert engine.parallel == 1 and engine.health_path == "/v1/models"
    assert engine.command()[1:3] == ["-m", "llama_cpp.server"] and "--interrupt_requests" in engine.command()
    (stream,) = engine.streams(Request(ids, SamplingParams(4, seed=3), Collect()))
    assert stream.body["seed"] == 3 and stream.body["logit_bias"] == {"9": -1e9}
    assert tokenizer(stream.body["prompt"], add_special_tokens=False)["input_ids"] == ids  # the same tokens come back


def test_which_llama_server_runs(fake_llama_server, monkeypatch, tmp_path):
    script, _ = fake_llama_server
    monkeypatch.delenv("TUNEFORGE_LLAMA_SERVER", raising=False)
    monkeypatch.setenv("PATH", f"{script.parent}{os.pathsep}{os.environ['PATH']}")
    assert llama_server(ServeOptions()) == str(script)  # on PATH
    if all(map(installed, SERVER_MODULES)):
        assert llama_server(ServeOptions(llama_server="python")) is None  # llama-cpp-python's server, asked for
        monkeypatch.setenv("TUNEFORGE_LLAMA_SERVER", "python")
        assert llama_server(ServeOptions()) is None
    else:  # asked for, and not installed: the error says what to install
        with pytest.raises(ConfigError, match=r"--engine llama.cpp needs .*pip install"):
            llama_server(ServeOptions(llama_server="python"))
    with pytest.raises(ConfigError, match="--llama-server /no/such/llama-server.*not an executable"):
        llama_server(ServeOptions(llama_server="/no/such/llama-server"))


def test_a_registry_promote_swaps_the_llama_cpp_engine(fake_llama_server, tiny_model, tmp_path, monkeypatch):
    """serve registry:production --engine llama.cpp: a promote writes the new version's GGUF export, starts a child
    server on it, swaps it in, and stops the old child once it has drained (the life is child_server.py's)."""
    pytest.importorskip("llama_cpp", reason="the GGUF export's probe check reads the file through llama-cpp-python")
    script, _ = fake_llama_server
    monkeypatch.setenv("FAKE_LLAMA_ECHO_MODEL", "1")
    check_promote_swaps_child_engine(tiny_model, tmp_path, {"engine": "llama.cpp", "llama_server": str(script),
                                                            "engine_quant": "f32"}, seed=0)
