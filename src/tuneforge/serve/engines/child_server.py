"""What every engine that runs an OpenAI-style server as a child process shares: the child's life and the forwarding.

The fast engines (vllm.py, llamacpp.py) do not generate in tuneforge's process: each starts its
engine's own server on a free local port and forwards requests to it. Generation then never shares
the web server's GIL (the in-process llama.cpp engine it replaces reached 0.20-0.75x of llama.cpp's
own server for that reason; bench/RESULTS.md), and the child batches concurrent requests its own way.
A subclass says only what is its own: the command line (`command`), the HTTP calls one request
becomes (`streams`: vLLM sends the n choices in one call, llama.cpp one call per choice), the health
path, and how the model was prepared for it (select.py's cache).

Lifecycle: start() launches the child and waits for its health path (it fails with the child's last
log lines if the child exits first or never becomes healthy). A monitor thread waits on the child:
if it dies while serving, the requests it held get a 503 (`Unavailable`), new ones are refused with
a 503 naming the cause (`EngineUnavailable`) while it restarts (at most MAX_RESTARTS times), then
served again. shutdown() lets in-flight requests finish, then terminates the child (SIGTERM, then
SIGKILL). Pinned by tests/serve/test_engines.py (a stand-in vLLM server and a stand-in llama-server).

Forwarding: requests go out as /v1/completions calls with token ids, streamed, on an asyncio loop of
its own thread (`relay` reads the chunks; a call whose connection breaks before any answer is sent
once more, because llama-server closes kept-alive connections that the client may just be reusing); text deltas and finish reasons come back as the events
every engine sends, so tuneforge's HTTP layer does not know which engine answered. A choice's token
count is its stream's usage (the chunk that carries `completion_tokens`: vLLM's last chunk,
llama-server's finishing one); with several choices in one stream, continuous usage statistics
attribute each chunk's increase of the total to that chunk's choice; a server that reports no usage
(llama-cpp-python's) gets its text chunks counted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shlex
import socket
import subprocess
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from tuneforge.errors import ModelError
from tuneforge.serve.engine import Delta, Done, EngineClosed, EngineStats, Failed, Request
from tuneforge.serve.engines.api import EngineUnavailable, Unavailable, missing_engine

log = logging.getLogger("tuneforge.serve")
MAX_RESTARTS = 3
MODEL_NAME = "tuneforge-served"  # the name the child serves its one model under


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Stream:
    """One streamed /v1/completions call answering `choices` of a request's choices, from its choice `first` on."""

    body: dict
    first: int = 0
    choices: int = 1


class ChildServerEngine(ABC):
    """A GenerationEngine (api.py) backed by a child OpenAI-style server. Subclasses set the class attributes and
    define `command()` and `streams()`."""

    name = "child"  # the engine's name in messages ("vllm", "llama.cpp")
    label = "the child server"  # the child in messages ("the vLLM server")
    health_path = "/health"
    args_env = ""  # an environment variable of extra server flags (shell syntax; they come last, so they win)

    def __init__(self, log_dir: Path, threads: int | None, startup_timeout_s: float):
        try:
            import httpx2
        except ImportError:
            raise missing_engine(self.name, "httpx2 (tuneforge's client for the child server)",
                                 f"pip install 'tuneforge[{self.name.replace('.', '')}]'") from None
        self.httpx = httpx2
        self.threads, self.startup_timeout_s = threads, startup_timeout_s
        self.stats = EngineStats()
        self.port = free_port()
        self.log_path = log_dir / f"{self.name.replace('.', '')}-{self.port}.log"
        self.process: subprocess.Popen | None = None
        self.restarts = 0
        self.problem: str | None = f"{self.label} has not started"  # why requests are refused now; None: serving
        self._closing = False
        self._lock = threading.Lock()
        self._inflight: dict[int, bool] = {}  # id(request) -> has it produced a token yet
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._loop.run_forever, name=f"tuneforge-{self.name}-client",
                                             daemon=True)
        self._client = None
        self._monitor: threading.Thread | None = None

    # --- what a subclass says ------------------------------------------------------------------

    @abstractmethod
    def command(self) -> list[str]:
        """The child server's command line (before the extra arguments of `args_env`)."""

    @abstractmethod
    def streams(self, request: Request) -> list[Stream]:
        """The child's calls for one request, a stream per choice (vLLM: one call with n; llama.cpp: one each)."""

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def full_command(self) -> list[str]:
        return self.command() + (shlex.split(os.environ.get(self.args_env, "")) if self.args_env else [])

    # --- the child process ---------------------------------------------------------------------

    def _launch(self) -> None:
        command = self.full_command()
        log.info("starting %s: %s (log: %s)", self.label, " ".join(command), self.log_path)
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=self.env(),
                                            start_new_session=True)
        self._wait_healthy()

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        with self.httpx.Client(timeout=5.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise ModelError(f"{self.label} exited with code {self.process.returncode} while starting:\n"
                                     f"{self.log_tail()}")
                try:
                    if client.get(f"http://127.0.0.1:{self.port}{self.health_path}").status_code == 200:
                        self.problem = None
                        return
                except self.httpx.TransportError:
                    pass
                time.sleep(0.5)
        self._terminate()
        raise ModelError(f"{self.label} did not become healthy within {self.startup_timeout_s:g} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _supervise(self) -> None:
        """Wait on the child; when it dies while serving, fail what it held and restart it (a few times)."""
        while not self._closing:
            code = self.process.wait()
            if self._closing:
                return
            self.problem = f"{self.label} exited unexpectedly (code {code}); restarting it"
            log.error("%s; its last log lines:\n%s", self.problem, self.log_tail())
            if self.restarts >= MAX_RESTARTS:
                self.problem = f"{self.label} exited {self.restarts + 1} times (last code {code}); not restarting it"
                log.error(self.problem)
                return
            self.restarts += 1
            try:
                self._launch()
            except ModelError as exc:
                self.problem = f"{self.label} could not be restarted: {exc}"
                log.error(self.problem)
                return

    def _terminate(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    # --- the engine protocol -------------------------------------------------------------------

    def start(self) -> None:
        self._launch()
        self._loop_thread.start()
        self._client = asyncio.run_coroutine_threadsafe(self._new_client(), self._loop).result()
        self._monitor = threading.Thread(target=self._supervise, name=f"tuneforge-{self.name}-monitor", daemon=True)
        self._monitor.start()

    async def _new_client(self):
        limits = self.httpx.Limits(max_connections=256, max_keepalive_connections=64)
        return self.httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.port}", timeout=None, limits=limits)

    def submit(self, request: Request) -> None:
        if self._closing:
            raise EngineClosed("the server is shutting down")
        if self.problem is not None:
            raise EngineUnavailable(f"The {self.name} engine is not available: {self.problem}")
        with self._lock:
            self._inflight[id(request)] = False
        asyncio.run_coroutine_threadsafe(self._forward(request), self._loop)

    def shutdown(self, timeout: float | None = None) -> bool:
        self._closing = True
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._inflight and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.05)
        finished = not self._inflight
        if self._client is not None and self._loop.is_running():
            asyncio.run_coroutine_threadsafe(self._client.aclose(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._terminate()
        return finished

    @property
    def alive(self) -> bool:
        return not self._closing and self.problem is None

    @property
    def queue_depth(self) -> int:
        return sum(not started for started in list(self._inflight.values()))

    @property
    def running(self) -> int:
        return sum(started for started in list(self._inflight.values()))

    # --- forwarding ----------------------------------------------------------------------------

    async def _forward(self, request: Request) -> None:
        try:
            await asyncio.gather(*(self._call(request, stream) for stream in self.streams(request)))
        except Exception as exc:  # building the calls failed (a bug): this request fails, the others go on
            log.exception("forwarding to %s failed", self.label)
            self.stats.failures += 1
            request.sink(Failed(f"generation failed: {type(exc).__name__}: {exc}"))
        finally:
            with self._lock:
                self._inflight.pop(id(request), None)

    async def _call(self, request: Request, stream: Stream) -> None:
        self.stats.prefills += 1
        for attempt in (1, 2):
            answered = False
            try:
                async with self._client.stream("POST", "/v1/completions", json=stream.body) as response:
                    answered = True
                    if response.status_code != 200:
                        detail = (await response.aread()).decode(errors="replace")[:500]
                        request.sink(Failed(f"{self.label} answered {response.status_code}: {detail}"))
                        return
                    finished = await relay(self.stats, request, stream, response.aiter_lines(), self._inflight)
                if finished < stream.choices and not request.cancelled:  # the stream ended early: the server closed it
                    await self._lost(request, "ended the stream before the reply finished")
                return
            except self.httpx.TransportError as exc:
                if not answered and attempt == 1 and self.problem is None:
                    continue  # a kept-alive connection the server had just closed (llama-server does): a new one
                await self._lost(request, f"connection broke: {exc}")
                return
            except Exception as exc:  # a malformed chunk or a bug: this request fails, the others go on
                log.exception("forwarding to %s failed", self.label)
                self.stats.failures += 1
                request.sink(Failed(f"generation failed: {type(exc).__name__}: {exc}"))
                return

    async def _lost(self, request: Request, what: str, wait_s: float = 2.0) -> None:
        """A reply cut short: a 503 if the child died (the monitor notices within moments), else a failure."""
        deadline = time.monotonic() + wait_s
        while self.problem is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.problem is not None:
            request.sink(Unavailable(f"{self.label} went away while generating this request: {self.problem}"))
        else:
            self.stats.failures += 1
            request.sink(Failed(f"generation failed: {self.label} {what}"))


def finish(stats: EngineStats, request: Request, stream: Stream, pending: dict[int, str], tokens: list[int]) -> int:
    """Send Done for the stream's choices that finished (their token counts in `tokens`); how many."""
    for index, reason in pending.items():
        stats.prefilled_rows += 1
        stats.decoded_rows += max(tokens[index] - 1, 0)
        request.sink(Done(request.first_choice + stream.first + index, reason, tokens[index]))
    sent = len(pending)
    pending.clear()
    return sent


async def relay(stats: EngineStats, request: Request, stream: Stream, lines, inflight: dict[int, bool]) -> int:
    """Relay one call's SSE chunks as engine events; how many of its choices finished. A single choice's Done
    waits for the chunk carrying usage (vLLM sends it right after the finishing chunk, llama-server in it)."""
    continuous = stream.choices > 1
    counted, total, finished, pending = [0] * stream.choices, 0, 0, {}
    async for line in lines:
        if request.cancelled:
            return finished  # leaving the stream closes the connection, and the server aborts the request
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[len("data: "):])
        usage = chunk.get("usage") or {}
        for choice in chunk.get("choices", []):
            index, text = choice["index"], choice.get("text")
            now = usage.get("completion_tokens") if continuous else None
            counted[index] += (now - total) if now is not None else int(bool(text))
            total = now if now is not None else total + 1
            inflight[id(request)] = True
            if text:
                request.sink(Delta(request.first_choice + stream.first + index, text))
            if choice.get("finish_reason"):
                pending[index] = "length" if choice["finish_reason"] == "length" else "stop"
                if continuous:
                    finished += finish(stats, request, stream, pending, counted)
        if "completion_tokens" in usage and pending and not continuous:
            finished += finish(stats, request, stream, pending, [usage["completion_tokens"]])
    return finished + finish(stats, request, stream, pending, counted)
