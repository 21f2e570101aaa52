"""Server test fixtures: the tiny random model served in-process (uvicorn in a thread) on a free loopback port."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest


# What the stand-in child servers (a fake vLLM in test_engines.py, a fake llama-server in test_llamacpp_engine.py)
# share: the health check, reading a request's JSON body, and serving. Each script is this, then its own part.
STAND_IN_SERVER = '''
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class StandInHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def log_message(self, *a):
        pass

    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def body(self):
        return json.loads(self.rfile.read(int(self.headers["Content-Length"])))


def serve(handler, port):
    ThreadingHTTPServer(("127.0.0.1", port), handler).serve_forever()
'''


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core machine OpenMP threads contend (100x slower)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_served(tiny_model):
    from tuneforge.serve.served import load_served

    return load_served(str(tiny_model))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Live:
    url: str
    server: object  # uvicorn.Server
    thread: threading.Thread
    state: object  # completions.ServerState

    @property
    def engine(self):
        return self.state.engine

    def client(self, key: str = "unused", timeout: float = 30):
        from openai import OpenAI

        return OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=timeout)

    def post(self, path: str, body=None, key: str | None = None, content: bytes | None = None, timeout: float = 30):
        data = content if content is not None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return http(urllib.request.Request(self.url + path, data=data, headers=headers, method="POST"), timeout)

    def get(self, path: str, key: str | None = None):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return http(urllib.request.Request(self.url + path, headers=headers), 30)


@dataclass
class Raw:
    """A raw HTTP response (the standard library's, so no HTTP client beyond `openai` is needed)."""

    status_code: int
    headers: object  # email.message.Message: case-insensitive get
    text: str

    def json(self):
        return json.loads(self.text)


def http(request: urllib.request.Request, timeout: float) -> Raw:
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Raw(response.status, response.headers, response.read().decode())
    except urllib.error.HTTPError as error:
        with error:
            return Raw(error.code, error.headers, error.read().decode())


@contextmanager
def running(served, **options) -> Iterator[Live]:
    """A server on a free loopback port for the duration of the block; stopped (gracefully) afterwards."""
    from tuneforge.serve.app import create_app
    from tuneforge.serve.options import ServeOptions

    options = ServeOptions(port=free_port(), **options)
    app = create_app(served, options)
    with server_thread(app, options.port, log_level="info", timeout_graceful_shutdown=10) as (server, thread):
        yield Live(f"http://127.0.0.1:{options.port}", server, thread, app.state.server)


@contextmanager
def server_thread(app, port: int, **config) -> Iterator[tuple]:
    """(uvicorn server, its thread): `app` served on a loopback port in a thread, started before the block."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, **config))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield server, thread
    finally:
        server.should_exit = True
        thread.join(20)


@contextmanager
def gated(engine) -> Iterator[threading.Event]:
    """Hold every forward pass of `engine` until the yielded event is set (at the latest when the block ends)."""
    gate = threading.Event()
    forward = engine._forward

    def wait_then_forward(*args, **kwargs):
        gate.wait(30)
        return forward(*args, **kwargs)

    engine._forward = wait_then_forward
    try:
        yield gate
    finally:
        gate.set()


def wait_until(condition, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def sse_payloads(text: str) -> list[dict]:
    """The JSON payloads of a server-sent-event body; asserts it ends with `data: [DONE]`."""
    events = [block for block in text.split("\n\n") if block.strip()]
    assert events[-1] == "data: [DONE]", events[-1]
    assert all(block.startswith("data: ") for block in events)
    return [json.loads(block.removeprefix("data: ")) for block in events[:-1]]


def chat(content: str, **fields) -> dict:
    return {"messages": [{"role": "user", "content": content}], **fields}


def check_promote_swaps_child_engine(tiny_model, tmp_path, engine_options: dict, seed: int | None = None) -> None:
    """serve registry:production with a child-server engine: a promote starts a child on the new version's export,
    swaps it in (the reply names v2 and differs), and stops the old child once it has drained. Shared by the
    vLLM and llama.cpp engines' tests (the life is child_server.py's)."""
    from openai import OpenAI
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneforge.models.load import ModelInfo
    from tuneforge.registry.store import add_version, open_registry, set_alias
    from tuneforge.serve.app import create_app
    from tuneforge.serve.live import load_target, target_from
    from tuneforge.serve.options import ServeOptions

    final = tmp_path / "run-v2" / "final"
    AutoModelForCausalLM.from_pretrained(tiny_model).save_pretrained(final)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(final)
    ModelInfo(base_model=str(tiny_model), method="full").write(final)
    conn = open_registry(tmp_path / "registry.db")
    for directory in (tiny_model, final.parent):
        add_version(conn, directory, base_model="tiny-llama", method="full")
    set_alias(conn, "production", "v1")

    target = target_from("registry:production", tmp_path / "registry.db", None, poll_s=0.1)
    options = ServeOptions(port=free_port(), **engine_options)
    app = create_app(load_target(target), options, target)
    state = app.state.server
    with server_thread(app, options.port, timeout_graceful_shutdown=10):
        client = OpenAI(base_url=f"http://127.0.0.1:{options.port}/v1", api_key="x", max_retries=0, timeout=60)

        def ask():
            extra = {} if seed is None else {"seed": seed}
            reply = client.completions.create(model="production", prompt="Hi", max_tokens=1, **extra)
            return reply.choices[0].text, reply.system_fingerprint

        first_text, version = ask()
        first_engine = state.engine
        assert version == "v1"
        set_alias(conn, "production", "v2")
        wait_until(lambda: state.served.version == "v2", timeout=120)
        second_text, version = ask()
        assert version == "v2" and second_text != first_text  # another export answers
        wait_until(lambda: first_engine.process.poll() is not None, timeout=60)  # the old child is gone
    conn.close()
