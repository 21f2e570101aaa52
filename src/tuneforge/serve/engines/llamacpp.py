"""`--engine llama.cpp`: llama.cpp's own server as a child process on the GGUF export; tuneforge forwards and streams back.

The served model (a LoRA run merged first) is written once as GGUF (deploy/gguf.py, `--quant`,
default q8_0) into TUNEFORGE_HOME/engines/gguf/KEY/ (select.py). Before a new file enters the cache,
llama.cpp's logits on a probe prompt must match the transformers model's within the quantisation's
llama.cpp tolerance (deploy/gguf_export.TOLERANCES): a file llama.cpp reads differently is never
served. The transformers weights are then let go; the child holds the model.

Which server (`llama_server`): llama.cpp's C++ `llama-server` when found (--llama-server PATH,
$TUNEFORGE_LLAMA_SERVER, else `llama-server` on PATH), with `--parallel` slots (--max-batch-size) so
concurrent requests decode together; else llama-cpp-python's own server (`python -m llama_cpp.server`,
the `llama-cpp-python[server]` extra), which decodes one request at a time. Either runs in its own
process, so generation never competes with tuneforge's HTTP layer for the GIL (the in-process engine
this replaced reached 0.20-0.75x of llama.cpp's own server; bench/RESULTS.md). Extra server flags:
$TUNEFORGE_LLAMA_ARGS. Its life (start, health, crash -> 503 -> restart, shutdown) and the relay are
child_server.py's, shared with the vLLM engine; tests/serve/test_engines.py runs them against a
stand-in llama-server.

What only llama.cpp does here: one call per choice (seeded seed + j, as the built-in engine seeds
choice j), sampling pinned to the built-in engine's (temperature then top_p; llama.cpp's default
top_k 40, min_p 0.05 and repeat penalty switched off), the generation config's suppressed tokens as
logit biases. llama-server takes the prompt as token ids; llama-cpp-python's server takes text only,
so it gets the ids decoded (special tokens kept as text, which it tokenizes back as special tokens).
Replies stop at the end-of-turn and EOS tokens the GGUF names, and are detokenized by llama.cpp.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import random
import shutil
import sys
from pathlib import Path

from tuneforge.errors import ConfigError, ModelError
from tuneforge.models.generate import end_of_turn_ids
from tuneforge.serve.engine import Request
from tuneforge.serve.engines.api import missing_engine
from tuneforge.serve.engines.child_server import MODEL_NAME, ChildServerEngine, Stream
from tuneforge.serve.engines.select import cache_dir, fill_cache, merged_model, source_key
from tuneforge.serve.options import ServeOptions
from tuneforge.serve.served import Served

log = logging.getLogger("tuneforge.serve")
SERVER_ENV = "TUNEFORGE_LLAMA_SERVER"
PYTHON_SERVER = "python"  # --llama-server python: llama-cpp-python's server even where llama-server is found
STARTUP_TIMEOUT_S = 300.0
SEED_RANGE = 0xFFFFFFFF  # llama.cpp seeds are 32-bit and 0xFFFFFFFF means "random": a 64-bit seed is folded below it
INSTALL = "pip install 'tuneforge[llamacpp]' (llama-cpp-python; it builds llama.cpp from source, ~10 min on 2 cores)"
SERVER_MODULES = ("llama_cpp.server", "sse_starlette", "starlette_context", "pydantic_settings", "uvicorn")


def installed(module: str) -> bool:
    """Whether `module` can be imported; a submodule of a missing package is missing, not an error."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def llama_server(options: ServeOptions) -> str | None:
    """The llama-server binary to run, or None for llama-cpp-python's server (a clear error when neither is there)."""
    chosen = options.llama_server or os.environ.get(SERVER_ENV)
    if chosen and chosen != PYTHON_SERVER:
        found = shutil.which(chosen)
        if found is None:
            raise ConfigError(f"--llama-server {chosen} (or ${SERVER_ENV}): not an executable file; build llama-server "
                              f"as docs/deploy.md says, or pass --llama-server {PYTHON_SERVER}")
        return found
    found = None if chosen == PYTHON_SERVER else shutil.which("llama-server")
    if found is None and not all(map(installed, SERVER_MODULES)):
        raise missing_engine("llama.cpp", "llama.cpp's server (no llama-server binary found, and llama-cpp-python's "
                             "server extra is not installed)", INSTALL + f", or set {SERVER_ENV} to a llama-server binary")
    return found


def gguf_for(served: Served, quant: str) -> Path:
    """The cached GGUF export of the served model (written and checked on first use)."""
    from tuneforge.deploy import gguf

    chosen = gguf.quant(quant)
    directory = cache_dir("gguf", source_key(served, "gguf", chosen.name))

    def write(tmp: Path) -> None:
        model = merged_model(served)
        stops = end_of_turn_ids(model.generation_config, served.tokenizer)
        log.info("writing the GGUF export (%s) of %s into %s", chosen.name, served.default, directory)
        gguf.write_gguf(model, served.tokenizer, stops, tmp / gguf.GGUF_NAME, chosen, name=served.default)
        probe_check(model, served.tokenizer, tmp / gguf.GGUF_NAME, chosen.name)

    return fill_cache(directory, write) / gguf.GGUF_NAME


def probe_check(model, tokenizer, path: Path, quant: str) -> None:
    """llama.cpp's logits on a short chat prompt against the transformers model's, within the quantisation's tolerance."""
    import numpy as np
    import torch

    from tuneforge.deploy.gguf_export import TOLERANCES
    from tuneforge.deploy.gguf_llamacpp import logits_of, open_llama
    from tuneforge.models.generate import render_prompt

    text = render_prompt(tokenizer, [{"role": "user", "content": "Hello! Who are you?"}]) if tokenizer.chat_template else "Hello"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        expected = model.float()(input_ids=torch.tensor([ids])).logits[0].numpy()
    llm = open_llama(path, n_ctx=len(ids) + 8, logits_all=True)
    try:
        diff = float(np.abs(logits_of(llm, ids) - expected).max())
    finally:
        llm.close()
    if not diff <= TOLERANCES[quant].llama_cpp_atol:
        raise ModelError(f"llama.cpp reads the GGUF export of this model differently: logits differ by {diff:.3g} "
                         f"(tolerance {TOLERANCES[quant].llama_cpp_atol:g} for {quant}); serve it with --engine builtin")


class LlamaCppEngine(ChildServerEngine):
    name = "llama.cpp"
    args_env = "TUNEFORGE_LLAMA_ARGS"

    def __init__(self, binary: str | None, path: Path, tokenizer, n_ctx: int, parallel: int = 1,
                 threads: int | None = None, suppressed: list[int] = (), startup_timeout_s: float = STARTUP_TIMEOUT_S):
        self.label = "the llama-server" if binary else "llama-cpp-python's server"  # before super() uses it
        self.health_path = "/health" if binary else "/v1/models"
        super().__init__(path.parent, threads, startup_timeout_s)
        self.binary, self.path, self.tokenizer, self.n_ctx = binary, path, tokenizer, n_ctx
        self.parallel = parallel if binary else 1  # llama-cpp-python's server decodes one request at a time
        self.suppressed = list(suppressed)  # the generation config's suppress_tokens, never sampled (as built-in)

    @classmethod
    def for_served(cls, served: Served, options: ServeOptions) -> LlamaCppEngine:
        try:
            import llama_cpp  # noqa: F401  (the probe check reads the export through it)
        except ImportError:
            raise missing_engine("llama.cpp", "llama-cpp-python", INSTALL) from None
        binary = llama_server(options)
        path = gguf_for(served, options.engine_quant)
        n_ctx = options.max_prompt_tokens + options.max_new_tokens
        if served.context_length:
            n_ctx = min(n_ctx, served.context_length)
        suppressed = getattr(getattr(served.model, "generation_config", None), "suppress_tokens", None) or []
        engine = cls(binary, path, served.tokenizer, n_ctx, options.max_batch_size, options.threads, suppressed)
        served.model = None  # the child holds the weights now; the transformers copy is freed
        return engine

    def command(self) -> list[str]:
        """The child's command line. Threads: --threads when given, else the server's own default (llama.cpp's
        worker threads spin at each step's barrier, so on a busy machine fewer threads are far faster: 111
        vs 6.4 tokens/s for 1 vs 2 threads on this 2-core machine at load 5; docs/deploy.md)."""
        common = ["--model", str(self.path), "--host", "127.0.0.1", "--port", str(self.port)]
        threads = str(self.threads) if self.threads else None
        if self.binary:  # each slot gets n_ctx tokens of KV cache
            return [self.binary, *common, "--alias", MODEL_NAME, "--ctx-size", str(self.n_ctx * self.parallel),
                    "--parallel", str(self.parallel), "--no-webui",
                    *(["--threads", threads, "--threads-batch", threads] if threads else [])]
        return [sys.executable, "-m", "llama_cpp.server", *common, "--model_alias", MODEL_NAME,
                "--n_ctx", str(self.n_ctx), "--interrupt_requests", "False", "--logits_all", "False",
                *(["--n_threads", threads, "--n_threads_batch", threads] if threads else [])]

    def streams(self, request: Request) -> list[Stream]:
        params = request.params
        body = {"model": MODEL_NAME, "max_tokens": params.max_tokens, "temperature": params.temperature,
                "top_p": params.top_p, "top_k": 0, "min_p": 0.0, "typical_p": 1.0, "repeat_penalty": 1.0,
                "presence_penalty": 0.0, "frequency_penalty": 0.0, "stream": True}
        if params.stop:
            body["stop"] = list(params.stop)
        if self.binary:
            body.update(prompt=request.prompt, cache_prompt=True, samplers=["temperature", "top_p"])
            if self.suppressed:
                body["logit_bias"] = [[token, False] for token in self.suppressed]
        else:
            body["prompt"] = self.tokenizer.decode(request.prompt, skip_special_tokens=False,
                                                   clean_up_tokenization_spaces=False)
            if self.suppressed:
                body.update(logit_bias={str(token): -1e9 for token in self.suppressed}, logit_bias_type="input_ids")
        seeds = [(params.seed + j) % SEED_RANGE if params.seed is not None else random.getrandbits(31)
                 for j in range(request.n)]
        return [Stream({**body, "seed": seed}, j, 1) for j, seed in enumerate(seeds)]
