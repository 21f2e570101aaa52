"""`tuneforge serve` options, and SIGTERM on a real server process: the stream in flight still finishes."""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from tests.serve.conftest import free_port
from tuneforge.errors import ConfigError
from tuneforge.monitor.store import connect, read_requests
from tuneforge.serve.commands import add_parsers, describe, options_from, run_serve
from tuneforge.serve.options import API_KEYS_ENV, ServeOptions, api_keys_from


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tuneforge")
    add_parsers(parser.add_subparsers(dest="command"))
    return parser.parse_args(["serve", *argv])


def test_flags_become_options(monkeypatch):
    monkeypatch.setenv(API_KEYS_ENV, "env-key, second-env-key,")
    args = parse("runs/quickstart", "--adapter", "a=runs/a", "--adapter", "b=runs/b", "--api-key", "flag-key",
                 "--port", "9001", "--max-prompt-tokens", "100", "--max-new-tokens", "50", "--max-concurrent", "3",
                 "--request-timeout", "7.5", "--max-batch-size", "4", "--no-batching")
    options = options_from(args)
    assert options == ServeOptions(port=9001, api_keys=("flag-key", "env-key", "second-env-key"), max_prompt_tokens=100,
                                   max_new_tokens=50, max_concurrent=3, request_timeout_s=7.5, max_batch_size=4,
                                   batching=False, log_db=Path("tuneforge-requests.db"))
    assert args.adapters == ["a=runs/a", "b=runs/b"] and args.model == "runs/quickstart"
    assert options_from(parse("m")).batching and options_from(parse("m")).host == "127.0.0.1"


def test_bad_limits_are_config_errors_naming_them():
    with pytest.raises(ConfigError, match="max_batch_size"):
        options_from(parse("m", "--max-batch-size", "0"))
    with pytest.raises(ConfigError, match="request_timeout_s"):
        options_from(parse("m", "--request-timeout", "-1"))
    with pytest.raises(ConfigError, match="--threads"):
        run_serve(parse("m", "--threads", "0"), Console(stderr=True))  # before any model is loaded


def test_keys_are_deduplicated_and_never_described(tiny_served):
    assert api_keys_from(["a", " a ", ""], {API_KEYS_ENV: "b,a"}) == ("a", "b")
    text = describe(tiny_served, ServeOptions(api_keys=("secret-one", "secret-two")))
    assert "2 configured" in text and "secret" not in text
    assert "none" in describe(tiny_served, ServeOptions())


SERVER = """
import sys, time
import torch
from rich.console import Console
from tuneforge.serve import engine
torch.set_num_threads(1)
forward = engine.Engine._forward
def slow_forward(self, *args, **kwargs):  # slow enough that SIGTERM arrives mid-stream
    time.sleep(0.02)
    return forward(self, *args, **kwargs)
engine.Engine._forward = slow_forward
engine.suppressed_tokens = lambda model, device: torch.tensor(sorted(engine.end_of_turn_ids(model.generation_config, tokenizer)))
import argparse
from tuneforge.models.load import load_tokenizer
from tuneforge.serve.commands import add_parsers, run_serve
tokenizer = load_tokenizer(sys.argv[2])
parser = argparse.ArgumentParser()
add_parsers(parser.add_subparsers(dest="command"))
sys.exit(run_serve(parser.parse_args(sys.argv[1:]), Console(stderr=True)))
"""


def health(port: int) -> int | None:
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        connection.request("GET", "/health")
        return connection.getresponse().status
    except OSError:
        return None


def test_sigterm_lets_the_stream_in_flight_finish(tiny_model, tmp_path):
    port = free_port()
    process = subprocess.Popen([sys.executable, "-c", SERVER, "serve", str(tiny_model), "--port", str(port),
                                "--log-db", str(tmp_path / "requests.db")],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 60
        while health(port) != 200:
            assert process.poll() is None, process.stdout.read()
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.2)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        body = {"prompt": "Once upon a time", "max_tokens": 60, "stream": True, "temperature": 0}
        connection.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        assert response.status == 200
        lines, after_signal = [], 0
        while line := response.readline():
            if not line.strip():
                continue
            lines.append(line.decode().strip())
            if len(lines) == 3:
                process.send_signal(signal.SIGTERM)
            elif len(lines) > 3:
                after_signal += 1
        assert lines[-1] == "data: [DONE]"
        final = json.loads(lines[-2].removeprefix("data: "))
        assert final["choices"][0]["finish_reason"] == "length"
        assert after_signal > 10  # generation went on after SIGTERM, to the end
        process.wait(30)
        assert process.returncode in (0, -signal.SIGTERM)
        assert health(port) is None  # nothing listens any more
        [logged] = read_requests(connect(tmp_path / "requests.db", readonly=True))  # written before the exit
        assert (logged.endpoint, logged.finish_reason, logged.status) == ("/v1/completions", "length", 200)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
