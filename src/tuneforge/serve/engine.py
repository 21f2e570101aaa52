"""The batching generator: one scheduler thread decodes every active request together, with a KV cache.

Continuous batching: the running batch is a left-padded KV cache (one row per sequence, an
attention mask marking each row's padding, position ids counted from the mask). Between two
decode steps the scheduler admits waiting requests: their prompts are prefilled together in one
forward pass and their rows joined to the batch (caches left-padded to the same length); rows
that finish or are cancelled leave at once, and columns that became padding in every row are
trimmed. So a request never waits for another to finish, only for the current step.

Requests for different LoRA adapters share the batch: peft's mixed-batch inference takes one
adapter name per row (`__base__` for the adapter-free base), so one forward pass serves them all
instead of switching adapters between per-adapter batches (a batch of one adapter takes the
plain path, which is cheaper).

Each row samples with its own temperature, top_p and seeded generator (decoding.py). A request
whose own values fail while its sequences are set up or sampled (protocol.py validates them, so
this is the last line of defence) fails alone: its request gets the error, the rest of the batch
goes on (tests/serve/test_isolation.py). Events go
out through each request's `sink` (thread-safe), and a cancelled request leaves the batch at the
next step. `batching=False` admits one request at a time: the baseline the load benchmark uses.
The cache handling needs full-attention layers (Llama, Qwen, SmolLM ...); models with
sliding-window or linear-attention layers are refused at start.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tuneforge.errors import ModelError
from tuneforge.models.generate import end_of_turn_ids
from tuneforge.serve.decoding import RowSampling, TextStream, choose_tokens, new_generator

log = logging.getLogger("tuneforge.serve")
BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in a mixed batch


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
class Batch:
    seqs: list[Sequence]
    cache: object  # transformers DynamicCache, rows in the order of seqs
    mask: torch.Tensor  # [rows, cached tokens]: 1 real token, 0 left padding
    pending: torch.Tensor  # [rows]: each row's newest token, not yet in the cache


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
    def __init__(self, model, tokenizer, max_batch_size: int = 16, batching: bool = True):
        self.model = model
        self.tokenizer = copy.deepcopy(tokenizer)  # decoded on the scheduler thread, encoded by the web thread
        self.device = next(model.parameters()).device
        self.max_batch_size = max_batch_size
        self.batching = batching
        self.stop_ids = set(end_of_turn_ids(getattr(model, "generation_config", None), tokenizer))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.suppressed = suppressed_tokens(model, self.device)
        self.mixed_adapters = hasattr(model, "peft_config")
        self.core = model.get_base_model() if self.mixed_adapters else model
        self.cache_keyword = "cache" if "cache" in inspect.signature(self.core.forward).parameters else "past_key_values"
        self.new_cache()  # refuses models whose cache layers cannot be joined
        self.stats = EngineStats()
        self.batch: Batch | None = None
        self._init_queue("tuneforge-engine")

    # --- called from other threads -------------------------------------------------------------


    @property
    def running(self) -> int:
        batch = self.batch
        return len(batch.seqs) if batch else 0

    # --- the scheduler thread ------------------------------------------------------------------

    def _run(self) -> None:
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
        ids, mask = left_pad([r.prompt for r in requests], self.pad_id, self.device)
        cache = self.new_cache()
        logits = self._forward(ids, mask, position_ids(mask), cache, [r.adapter for r in requests])
        rows = [i for i, r in enumerate(requests) for _ in range(r.n)]
        if len(rows) > len(requests):  # n > 1: the choices share their prompt's prefill
            index = torch.tensor(rows, device=self.device)
            cache.batch_select_indices(index)
            mask, logits = mask[index], logits[index]
        self.stats.prefilled_rows += len(seqs)
        tokens = self._choose(logits, seqs)
        joined = Batch(seqs, cache, mask, torch.tensor(tokens, device=self.device))
        self.batch = merge(self.batch, keep_rows(joined, self._advance(seqs, tokens)))

    def _decode(self) -> None:
        batch = keep_rows(self.batch, [i for i, s in enumerate(self.batch.seqs) if not s.request.cancelled])
        self.batch = batch
        if batch is None:
            return
        self.stats.decode_steps += 1
        self.stats.decoded_rows += len(batch.seqs)
        mask = torch.cat([batch.mask, batch.mask.new_ones(len(batch.seqs), 1)], dim=1)
        positions = batch.mask.sum(dim=1, keepdim=True)
        logits = self._forward(batch.pending[:, None], mask, positions, batch.cache, [s.request.adapter for s in batch.seqs])
        tokens = self._choose(logits, batch.seqs)
        batch.mask, batch.pending = mask, torch.tensor(tokens, device=self.device)
        self.batch = keep_rows(batch, self._advance(batch.seqs, tokens))

    def _forward(self, ids, mask, positions, cache, adapters: list[str | None]) -> torch.Tensor:
        """Last-position logits of each row, each row through its own adapter.

        A batch of one adapter takes peft's plain path (that adapter active, or all adapters
        disabled for the base): the mixed-batch path costs about 18% more per step on a CPU.
        """
        kwargs = {self.cache_keyword: cache, "attention_mask": mask, "position_ids": positions,
                  "use_cache": True, "logits_to_keep": 1}
        names = {a or BASE_ADAPTER for a in adapters}
        if not self.mixed_adapters:
            return self.model(input_ids=ids, **kwargs).logits[:, -1]
        if names == {BASE_ADAPTER}:
            with self.model.disable_adapter():
                return self.model(input_ids=ids, **kwargs).logits[:, -1]
        if len(names) == 1:
            [name] = names
            if self.model.active_adapter != name:
                self.model.set_adapter(name, inference_mode=True)
            return self.model(input_ids=ids, **kwargs).logits[:, -1]
        return self.model(input_ids=ids, adapter_names=[a or BASE_ADAPTER for a in adapters], **kwargs).logits[:, -1]

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
        generator = new_generator(seed) if params.temperature > 0 else None
        return Sequence(request, request.first_choice + j, TextStream(self.tokenizer, params.stop),
                        RowSampling(params.temperature, params.top_p, generator))

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
        requests = {id(s.request): s.request for s in (self.batch.seqs if self.batch else [])}
        requests.update({id(r): r for r in admitted or []})
        self.batch = None
        for request in requests.values():
            request.sink(Failed(f"generation failed: {type(exc).__name__}: {exc}"))

    def new_cache(self):
        from transformers.cache_utils import DynamicCache, DynamicLayer

        cache = DynamicCache(config=self.core.config)
        if any(type(layer) is not DynamicLayer for layer in cache.layers):
            kinds = sorted({type(layer).__name__ for layer in cache.layers})
            raise ModelError(f"tuneforge serve batches full-attention models only; this one has {', '.join(kinds)}")
        return cache


def suppressed_tokens(model, device) -> torch.Tensor | None:
    """Token ids the model's generation config never lets it emit (honoured as `generate` would)."""
    ids = getattr(getattr(model, "generation_config", None), "suppress_tokens", None)
    return torch.tensor(list(ids), device=device) if ids else None


def left_pad(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    return ids, mask


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(dim=1) - 1).clamp(min=0)


def pad_cache_to(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """Left-pad a [rows, heads, tokens, dim] key or value tensor to `width` tokens."""
    return F.pad(tensor, (0, 0, width - tensor.shape[-2], 0))


def merge(running: Batch | None, joining: Batch | None) -> Batch | None:
    """One batch holding both batches' rows, the shorter caches left-padded to the longer."""
    if running is None or joining is None:
        return running or joining
    width = max(running.mask.shape[1], joining.mask.shape[1])
    for mine, theirs in zip(running.cache.layers, joining.cache.layers):
        mine.keys = torch.cat([pad_cache_to(mine.keys, width), pad_cache_to(theirs.keys, width)])
        mine.values = torch.cat([pad_cache_to(mine.values, width), pad_cache_to(theirs.values, width)])
    masks = [F.pad(m, (width - m.shape[1], 0)) for m in (running.mask, joining.mask)]
    return Batch(running.seqs + joining.seqs, running.cache, torch.cat(masks),
                 torch.cat([running.pending, joining.pending]))


def keep_rows(batch: Batch | None, keep: list[int]) -> Batch | None:
    """The batch with only the rows in `keep`, and without leading columns that are padding in all of them."""
    if batch is None or not keep:
        return None
    if len(keep) == len(batch.seqs):
        return batch
    index = torch.tensor(keep, device=batch.mask.device)
    batch.cache.batch_select_indices(index)
    mask, pending = batch.mask[index], batch.pending[index]
    start = int(mask.any(dim=0).int().argmax())  # the first column where some row has a real token
    if start:
        for layer in batch.cache.layers:
            layer.keys, layer.values = layer.keys[:, :, start:], layer.values[:, :, start:]
        mask = mask[:, start:]
    return Batch([batch.seqs[i] for i in keep], batch.cache, mask, pending)
