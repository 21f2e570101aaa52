"""`--engine llama.cpp`: llama-cpp-python in process, on the GGUF export of the served model.

The served model (a LoRA run merged first) is written once as GGUF (deploy/gguf.py, `--quant`,
default q8_0) into TUNEFORGE_HOME/engines/gguf/KEY/ (select.py). Before a new file enters the cache,
llama.cpp's logits on a probe prompt must match the transformers model's within the quantisation's
llama.cpp tolerance (deploy/gguf_export.TOLERANCES): a file llama.cpp reads differently is never
served. The transformers weights are then let go; llama.cpp holds the model.

One llama.cpp context serves one sequence at a time, so requests (and the n choices of one) run
one after another on a single thread, each reusing the KV cache of the prompt prefix it shares with
the previous one (llama-cpp-python matches the longest common prefix). Prompts arrive as token ids
tokenized by the served tokenizer, and replies are detokenized by it (decoding.TextStream), so
stop strings, end-of-turn tokens and text come out exactly as with the built-in engine; only the
logits come from llama.cpp. Sampling is llama.cpp's (temperature, top_p, seeded per choice).
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

from tuneforge.errors import ModelError
from tuneforge.models.generate import end_of_turn_ids
from tuneforge.serve.decoding import TextStream
from tuneforge.serve.engine import Delta, Done, EngineStats, Failed, Request, RequestQueue
from tuneforge.serve.engines.api import missing_engine
from tuneforge.serve.engines.select import cache_dir, fill_cache, merged_model, source_key
from tuneforge.serve.options import ServeOptions
from tuneforge.serve.served import Served

log = logging.getLogger("tuneforge.serve")
INSTALL = "pip install 'tuneforge[llamacpp]' (llama-cpp-python; it builds llama.cpp from source, ~10 min on 2 cores)"


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


class LlamaCppEngine(RequestQueue):
    def __init__(self, path: Path, tokenizer, stop_ids: list[int], n_ctx: int, threads: int | None = None,
                 suppressed: list[int] = ()):
        from tuneforge.deploy.gguf_llamacpp import open_llama

        self.path = path
        self.tokenizer = tokenizer
        self.stop_ids = set(stop_ids)
        self.suppressed = list(suppressed)  # the generation config's suppress_tokens, never sampled (as built-in)
        threads = threads or os.cpu_count() or 1
        self.llm = open_llama(path, n_ctx=n_ctx, threads=threads)
        self.n_ctx = n_ctx
        self.stats = EngineStats()
        self._current: Request | None = None
        self._init_queue("tuneforge-llama.cpp")

    @classmethod
    def for_served(cls, served: Served, options: ServeOptions) -> LlamaCppEngine:
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            raise missing_engine("llama.cpp", "llama-cpp-python", INSTALL) from None
        stops = end_of_turn_ids(getattr(served.model, "generation_config", None), served.tokenizer)
        path = gguf_for(served, options.engine_quant)
        n_ctx = options.max_prompt_tokens + options.max_new_tokens
        if served.context_length:
            n_ctx = min(n_ctx, served.context_length)
        suppressed = getattr(getattr(served.model, "generation_config", None), "suppress_tokens", None) or []
        engine = cls(path, served.tokenizer, stops, n_ctx, options.threads, suppressed)
        served.model = None  # llama.cpp holds the weights now; the transformers copy is freed
        return engine

    # --- called from other threads -------------------------------------------------------------

    def shutdown(self, timeout: float | None = None) -> bool:
        """As the built-in engine's, then frees llama.cpp's weights once the thread has ended."""
        finished = super().shutdown(timeout)
        if finished and self.llm is not None:
            self.llm.close()
            self.llm = None
        return finished

    @property
    def running(self) -> int:
        return 1 if self._current is not None else 0

    # --- the generation thread -----------------------------------------------------------------

    def _next(self) -> Request | None:
        with self._wake:
            while True:
                while self._waiting and self._waiting[0].cancelled:
                    self._waiting.popleft()
                if self._waiting:
                    self._current = self._waiting.popleft()
                    return self._current
                if self._closing:
                    return None
                self._wake.wait()

    def _run(self) -> None:
        while (request := self._next()) is not None:
            try:
                for j in range(request.n):
                    if request.cancelled:
                        break
                    self._generate(request, j)
            except Exception as exc:  # a llama.cpp error: fail this request, keep serving the others
                log.exception("llama.cpp generation failed")
                self.stats.failures += 1
                request.sink(Failed(f"generation failed: {type(exc).__name__}: {exc}"))
            finally:
                self._current = None

    def _generate(self, request: Request, j: int) -> None:
        params, choice = request.params, request.first_choice + j
        if len(request.prompt) + params.max_tokens > self.n_ctx:
            raise ModelError(f"prompt ({len(request.prompt)} tokens) + max_tokens ({params.max_tokens}) exceeds "
                             f"llama.cpp's context of {self.n_ctx} tokens")
        self.llm.set_seed(params.seed + j if params.seed is not None else random.getrandbits(31))
        text, generated = TextStream(self.tokenizer, params.stop), 0
        self.stats.prefills += 1
        tokens = self.llm.generate(request.prompt, temp=params.temperature, top_p=params.top_p, top_k=0, min_p=0.0,
                                   typical_p=1.0, repeat_penalty=1.0, reset=True,
                                   logits_processor=self._suppress if self.suppressed else None)
        for token in tokens:
            if request.cancelled:
                return
            generated += 1
            if generated == 1:
                self.stats.prefilled_rows += 1
            else:
                self.stats.decode_steps += 1
                self.stats.decoded_rows += 1
            reason, piece = self._advance(text, int(token), generated, params.max_tokens)
            if piece:
                request.sink(Delta(choice, piece))
            if reason:
                request.sink(Done(choice, reason, generated))
                return

    def _suppress(self, input_ids, scores):
        scores[self.suppressed] = -float("inf")
        return scores

    def _advance(self, text: TextStream, token: int, generated: int, max_tokens: int) -> tuple[str | None, str]:
        """(finish reason or None, the text to send) after one new token, as the built-in engine decides them."""
        if token in self.stop_ids:
            return "stop", text.finish()
        piece = text.add(token)
        if text.stopped:
            return "stop", piece
        if generated >= max_tokens:
            return "length", piece + text.finish()
        return None, piece
