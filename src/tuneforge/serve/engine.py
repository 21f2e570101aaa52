"""The batching generator: one scheduler thread decodes every active request together, with a KV cache.

Continuous batching through the decoding core that GRPO's rollouts share (models/batched_decode.py:
prefill, decode steps, joining and leaving rows, per-adapter forward passes; models/sampling.py: each
row's temperature, top_p and seeded generator). This module is the threaded request queue over it:
between two decode steps the scheduler admits waiting requests (prefilled together, joined to the
running batch); rows that finish or are cancelled leave at once. So a request never waits for another
to finish, only for the current step.

Requests for different LoRA adapters share the batch: peft's mixed-batch inference takes one
adapter name per row (`__base__` for the adapter-free base).

A request whose own values fail while its sequences are set up or sampled (protocol.py validates
them, so this is the last line of defence) fails alone: its request gets the error, the rest of the
batch goes on (tests/serve/test_isolation.py). Events go out through each request's `sink`
(thread-safe), and a cancelled request leaves the batch at the next step. `batching=False` admits one
request at a time: the baseline the load benchmark uses. Models with sliding-window or
linear-attention layers are refused at start (the core's cache handling needs full attention).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch

from tuneforge.models.batched_decode import BASE_ADAPTER  # noqa: F401 (serve's routes and engines name it here)
from tuneforge.models.batched_decode import Batch, BatchedDecoder, keep_rows, merge
from tuneforge.models.generate import end_of_turn_ids
from tuneforge.models.sampling import RowSampling, choose_tokens, row_sampling, suppressed_tokens
from tuneforge.serve.decoding import TextStream
from tuneforge.serve.threads import take as take_threads

log = logging.getLogger("tuneforge.serve")


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class Delta:
    choice: int
    text: str


@dataclass(frozen=True)
class Done:
    choice: int
    finish_reason: str  # "stop" (end of turn or a stop string) or "length" (max_tokens reached)
    completion_tokens: int


@dataclass(frozen=True)
class Failed:
    message: str


Event = Delta | Done | Failed


class EngineClosed(Exception):
    """The engine is shutting down and takes no new requests."""


@dataclass
class Request:
    """One prompt and its n choices, numbered from `first_choice` (a completions call may send several prompts)."""

    prompt: list[int]
    params: SamplingParams
    sink: Callable[[Event], None]
    n: int = 1
    adapter: str | None = None  # a peft adapter name, BASE_ADAPTER, or None for a model without adapters
    first_choice: int = 0
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True  # read by the scheduler at its next step


def asyncio_sink(queue: asyncio.Queue) -> Callable[[Event], None]:
    """A sink that hands events from the scheduler thread to the event loop that owns `queue`."""
    loop = asyncio.get_running_loop()

    def put(event: Event) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, event)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass

    return put


@dataclass
class Sequence:
    request: Request
    choice: int
    text: TextStream
    sampling: RowSampling
    generated: int = 0


@dataclass
class EngineStats:
    prefills: int = 0
    prefilled_rows: int = 0  # each got its first token from the prefill
    decode_steps: int = 0
    decoded_rows: int = 0  # sum of batch sizes over decode steps: / decode_steps = mean batch size
    failures: int = 0

    @property
    def generated_tokens(self) -> int:
        return self.prefilled_rows + self.decoded_rows


class RequestQueue:
    """What an engine that generates on its own thread of this process needs (the built-in engine's scheduler;
    the fast engines run in a child process instead, engines/child_server.py): a queue of admitted requests, the thread, and how it starts, takes requests and drains.
    The thread runs `self._run`, which waits on `_wake` for `_waiting` and stops once `_closing` is set
    and nothing is left."""

    def _init_queue(self, thread_name: str) -> None:
        self._waiting: deque[Request] = deque()
        self._wake = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=thread_name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, request: Request) -> None:
        with self._wake:
            if self._closing:
                raise EngineClosed("the server is shutting down")
            self._waiting.append(request)
            self._wake.notify()

    def shutdown(self, timeout: float | None = None) -> bool:
        """Refuse new requests, finish the admitted ones; True when all finished within `timeout`."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._closing

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)


class Engine(RequestQueue):
    def __init__(self, model, tokenizer, max_batch_size: int = 16, batching: bool = True, threads: int | None = None):
        self.model = model
        self.threads = threads  # torch threads of the scheduler thread (serve/threads.py); None: as they are
        self.tokenizer = copy.deepcopy(tokenizer)  # decoded on the scheduler thread, encoded by the web thread
        self.device = next(model.parameters()).device
        self.max_batch_size = max_batch_size
        self.batching = batching
        self.stop_ids = set(end_of_turn_ids(getattr(model, "generation_config", None), tokenizer))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.suppressed = suppressed_tokens(model, self.device)
        # every pass goes through self._forward, looked up at each call (refuses caches it cannot join)
        self.decoder = BatchedDecoder(model, self.pad_id, lambda *args: self._forward(*args))
        self.stats = EngineStats()
        self.batch: Batch | None = None
        self._init_queue("tuneforge-engine")

    # --- called from other threads -------------------------------------------------------------

    @property
    def running(self) -> int:
        batch = self.batch
        return len(batch.rows) if batch else 0

    # --- the scheduler thread ------------------------------------------------------------------

    def _run(self) -> None:
        take_threads(self.threads)
        with torch.inference_mode():
            while (admitted := self._admit()) is not None:
                try:
                    if admitted:
                        self._prefill(admitted)
                    if self.batch:
                        self._decode()
                except Exception as exc:  # a bug or out of memory: fail what is running, keep serving
                    log.exception("generation failed")
                    self._fail(admitted, exc)

    def _admit(self) -> list[Request] | None:
        """Waiting requests that fit the batch now; blocks while idle; None once closed and drained."""
        with self._wake:
            while True:
                while self._waiting and self._waiting[0].cancelled:
                    self._waiting.popleft()
                if self._waiting or self.batch:
                    break
                if self._closing:
                    return None
                self._wake.wait()
            taken: list[Request] = []
            rows = self.running
            while self._waiting:
                request = self._waiting[0]
                if rows and (not self.batching or rows + request.n > self.max_batch_size):
                    break
                if not request.cancelled:
                    taken.append(request)
                    rows += request.n
                self._waiting.popleft()
            return taken

    def _prefill(self, requests: list[Request]) -> None:
        built = [(r, self._sequences(r)) for r in requests]  # before the forward: a request that fails leaves
        requests, seqs = [r for r, rows in built if rows], [s for _, rows in built for s in rows]
        if not requests:
            return
        self.stats.prefills += 1
        cache, mask, logits = self.decoder.prefill([r.prompt for r in requests], [r.n for r in requests],
                                                   [r.adapter for r in requests])
        self.stats.prefilled_rows += len(seqs)
        tokens = self._choose(logits, seqs)
        joined = Batch(seqs, cache, mask, torch.tensor(tokens, device=self.device))
        self.batch = merge(self.batch, keep_rows(joined, self._advance(seqs, tokens)))

    def _decode(self) -> None:
        batch = keep_rows(self.batch, [i for i, s in enumerate(self.batch.rows) if not s.request.cancelled])
        self.batch = batch
        if batch is None:
            return
        self.stats.decode_steps += 1
        self.stats.decoded_rows += len(batch.rows)
        logits = self.decoder.decode(batch, [s.request.adapter for s in batch.rows])
        tokens = self._choose(logits, batch.rows)
        batch.pending = torch.tensor(tokens, device=self.device)
        self.batch = keep_rows(batch, self._advance(batch.rows, tokens))

    def _forward(self, ids, mask, positions, cache, adapters: list[str | None] | None) -> torch.Tensor:
        """Last-position logits of each row, each row through its own adapter (the core's pass)."""
        return self.decoder.forward(ids, mask, positions, cache, adapters)

    def _sequences(self, request: Request) -> list[Sequence]:
        """The request's n sequences; none, and the request failed alone, when its values cannot be used."""
        try:
            return [self._sequence(request, j) for j in range(request.n)]
        except Exception as exc:
            self._fail_one(request, exc)
            return []

    def _choose(self, logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
        """Each row's next token; should the batched choice fail, row by row, failing only the rows that fail."""
        try:
            return choose_tokens(logits, [s.sampling for s in seqs], self.suppressed)
        except Exception:
            tokens = []
            for i, seq in enumerate(seqs):
                try:
                    tokens += choose_tokens(logits[i : i + 1], [seq.sampling], self.suppressed)
                except Exception as exc:
                    self._fail_one(seq.request, exc)
                    tokens.append(self.pad_id)  # a cancelled row: _advance drops it
            return tokens

    def _fail_one(self, request: Request, exc: Exception) -> None:
        """Fail one request (its rows leave the batch at the next step); the others go on."""
        log.exception("a request failed alone; the rest of its batch goes on")
        self.stats.failures += 1
        if not request.cancelled:
            request.cancelled = True
            try:
                request.sink(Failed(f"generation failed: {type(exc).__name__}: {exc}"))
            except Exception:  # a sink that fails too: nobody can be told, and nobody else is affected
                log.exception("could not report a failed request")

    def _sequence(self, request: Request, j: int) -> Sequence:
        params = request.params
        seed = None if params.seed is None else params.seed + j
        return Sequence(request, request.first_choice + j, TextStream(self.tokenizer, params.stop),
                        row_sampling(params.temperature, params.top_p, seed))

    def _advance(self, seqs: list[Sequence], tokens: list[int]) -> list[int]:
        """Record each row's new token, send its text; the indices of rows still generating."""
        keep = []
        for i, (seq, token) in enumerate(zip(seqs, tokens)):
            if seq.request.cancelled:
                continue
            try:  # this row's own text and sink: a failure here fails its request alone
                seq.generated += 1
                if token in self.stop_ids:
                    reason, piece = "stop", seq.text.finish()
                else:
                    piece = seq.text.add(token)
                    reason = "stop" if seq.text.stopped else None
                    if reason is None and seq.generated >= seq.request.params.max_tokens:
                        reason, piece = "length", piece + seq.text.finish()
                if piece:
                    seq.request.sink(Delta(seq.choice, piece))
                if reason:
                    seq.request.sink(Done(seq.choice, reason, seq.generated))
            except Exception as exc:
                self._fail_one(seq.request, exc)
                continue
            if not reason:
                keep.append(i)
        return keep

    def _fail(self, admitted: list[Request] | None, exc: Exception) -> None:
        self.stats.failures += 1
        requests = {id(s.request): s.request for s in (self.batch.rows if self.batch else [])}
        requests.update({id(r): r for r in admitted or []})
        self.batch = None
        for request in requests.values():
            request.sink(Failed(f"generation failed: {type(exc).__name__}: {exc}"))

    def new_cache(self):
        return self.decoder.new_cache()
