"""From an OpenAI request to engine requests, and from engine events to an answer or a stream of chunks.

Prompts are tokenized here, on the web thread, so the limits (prompt tokens, max_tokens, the
model's context) are checked before anything is queued and a refusal costs no generation.
Chat prompts are rendered with the tokenizer's chat template (with the generation prompt); the
engine stops at the model's end-of-turn tokens.

Every request gets one id when its body has parsed (`Arrival`): the response `id`, the
X-Request-Id header (errors too) and the request log's key. Whatever the outcome (an answer, a
stream, a refusal, a timeout, a client that left), the finished request is handed to the request
log (monitor/requestlog.py) exactly once; the log never blocks or fails the request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from pydantic import BaseModel

from tuneforge.models.generate import render_prompt
from tuneforge.monitor.requestlog import Output, RequestLog, RequestRecord
from tuneforge.serve import errors
from tuneforge.serve.classifier import ClassifierWorker, ServedClassifier
from tuneforge.serve.engine import Delta, Done, EngineClosed, Failed, Request, SamplingParams, asyncio_sink
from tuneforge.serve.engines.api import EngineUnavailable, GenerationEngine, Unavailable
from tuneforge.serve.errors import ApiError
from tuneforge.serve.extra import ExtraModels
from tuneforge.serve.metrics import ServerMetrics
from tuneforge.serve.options import ServeOptions
from tuneforge.serve.protocol import (
    AssistantMessage, ChatChoice, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, ChoiceDelta,
    ChunkChoice, Completion, CompletionChoice, CompletionRequest, ErrorResponse, Usage, new_id, now,
)
from tuneforge.serve.served import Served

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
REQUEST_ID = "X-Request-Id"
CLIENT_LEFT = 499  # logged status of a stream the client closed before its end (nginx's convention)


@dataclass
class ServerState:
    """Everything a route needs, held by the app (app.state.server): a language model and its engine, or a
    classifier and its worker (classify.py)."""

    served: Served | ServedClassifier
    engine: GenerationEngine | ClassifierWorker
    options: ServeOptions
    metrics: ServerMetrics
    in_flight: int = 0
    request_log: RequestLog | None = None  # None: --no-log
    extra: ExtraModels | None = None  # models served by name beside the main one (extra.py); None: none


@dataclass
class Arrival:
    """A completion request the moment its body parsed, before any check: its id and what its log record needs."""

    endpoint: str
    id: str  # the response id; also X-Request-Id and the request log's key
    model: str  # as asked, or the server's default
    version: str | None  # state.served.version now: a hot swap later does not relabel this request
    messages: list[dict]  # the prompt as logged: [{role, content}], a text prompt as role "prompt"
    created: float = field(default_factory=time.time)
    started: float = field(default_factory=time.monotonic)
    prompt_tokens: int | None = None  # once tokenized
    logged: bool = False

    @staticmethod
    def of(body: ChatCompletionRequest | CompletionRequest, state: ServerState) -> Arrival:
        served = state.served
        if isinstance(body, ChatCompletionRequest):
            messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                        for m in body.messages]
            return Arrival(CHAT_PATH, new_id("chatcmpl"), body.model or served.default, served.version, messages)
        messages = [{"role": "prompt", "content": p} for p in body.prompts()]
        return Arrival(COMPLETIONS_PATH, new_id("cmpl"), body.model or served.default, served.version, messages)

    def log(self, state: ServerState, status: int = 200, error: str | None = None, outputs: list[Output] = (),
            completion_tokens: int | None = None, first_token_at: float | None = None) -> None:
        """Hand the finished request to the request log; only the first call counts, and it never blocks or raises."""
        if self.logged or state.request_log is None:
            return
        self.logged = True
        state.request_log.submit(RequestRecord(
            id=self.id, created=self.created, endpoint=self.endpoint, model=self.model, model_version=self.version,
            messages=self.messages, outputs=tuple(outputs), prompt_tokens=self.prompt_tokens,
            completion_tokens=completion_tokens, latency_s=time.monotonic() - self.started,
            ttft_s=None if first_token_at is None else first_token_at - self.started, status=status, error=error))


@contextmanager
def logged_failures(arrival: Arrival, state: ServerState) -> Iterator[None]:
    """A refusal or failure is logged under the request's id, and its error response carries that id."""
    try:
        yield
    except ApiError as exc:
        exc.headers = {**(exc.headers or {}), REQUEST_ID: arrival.id}
        arrival.log(state, exc.status, exc.detail.message)
        raise
    except Exception as exc:  # answered 500 by the app's handler
        arrival.log(state, 500, f"{type(exc).__name__}: {exc}")
        raise


@dataclass
class Job:
    """One API request, tokenized and checked, ready for the engine."""

    arrival: Arrival
    model: str
    adapter: str | None
    prompts: list[list[int]]
    params: SamplingParams
    n: int
    version: str | None = None  # the registry version of the model that takes it (Served.version when accepted)
    started: float = field(default_factory=time.monotonic)
    engine: GenerationEngine | None = None  # an extra model's engine (extra.py); None: the server's main engine

    @property
    def endpoint(self) -> str:
        return self.arrival.endpoint

    @property
    def choices(self) -> int:
        return len(self.prompts) * self.n

    @property
    def prompt_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)


def chat_job(body: ChatCompletionRequest, state: ServerState, arrival: Arrival) -> Job:
    served, engine = target(body.model, state)
    model, adapter = pick_model(body.model, served)
    tokenizer = served.tokenizer
    if not getattr(tokenizer, "chat_template", None):
        raise ApiError(400, f"The model '{model}' has no chat template; use /v1/completions", param="model",
                       code="no_chat_template")
    try:
        text = render_prompt(tokenizer, arrival.messages)
    except Exception as exc:  # the template's own checks (e.g. roles must alternate) raise arbitrary errors
        raise ApiError(400, f"The model's chat template refused these messages: {exc}", param="messages") from exc
    prompt = tokenizer.encode(text, add_special_tokens=False)
    arrival.prompt_tokens = len(prompt)
    return Job(arrival, model, adapter, [prompt], sampling(body, [prompt], state, served), body.n, arrival.version,
               engine=engine)


def completion_job(body: CompletionRequest, state: ServerState, arrival: Arrival) -> Job:
    served, engine = target(body.model, state)
    model, adapter = pick_model(body.model, served)
    prompts = [served.tokenizer.encode(p) for p in body.prompts()]
    arrival.prompt_tokens = sum(len(p) for p in prompts)
    return Job(arrival, model, adapter, prompts, sampling(body, prompts, state, served), body.n, arrival.version,
               engine=engine)


def target(name: str | None, state: ServerState) -> tuple[Served, GenerationEngine | None]:
    """The served model that answers `name`, and its engine: an extra model made ready by ExtraModels.ensure, or the
    main model (engine None: Generation takes the main engine when it starts, in the same step as this read)."""
    loaded = state.extra.get(name) if state.extra is not None and name not in state.served.names else None
    return loaded if loaded is not None else (state.served, None)


def pick_model(name: str | None, served: Served | ServedClassifier) -> tuple[str, str | None]:
    if isinstance(served, ServedClassifier):
        raise ApiError(400, f"The model '{served.name}' is a classifier: it labels texts and generates none; POST "
                       '/v1/classify with {"input": ["a text", ...]}', param="model", code="not_a_generative_model")
    name = name or served.default
    if name not in served.names:
        raise errors.unknown_model(name, list(served.names))
    return name, served.names[name].adapter


def sampling(body: ChatCompletionRequest | CompletionRequest, prompts: list[list[int]], state: ServerState,
             served: Served) -> SamplingParams:
    options, context = state.options, served.context_length
    longest = max(len(p) for p in prompts)
    if longest > options.max_prompt_tokens:
        raise ApiError(400, f"The prompt has {longest} tokens; this server takes at most {options.max_prompt_tokens}",
                       param="messages" if isinstance(body, ChatCompletionRequest) else "prompt",
                       code="context_length_exceeded")
    if min(len(p) for p in prompts) == 0:
        raise ApiError(400, "A prompt is empty", param="prompt")
    requested = body.requested_tokens()
    if requested is not None and requested > options.max_new_tokens:
        raise ApiError(400, f"max_tokens is {requested}; this server generates at most {options.max_new_tokens}",
                       param="max_tokens", code="max_tokens_exceeded")
    max_tokens = requested or body.default_tokens(options.max_new_tokens)
    if context is not None and longest + max_tokens > context:
        if requested is not None or longest >= context:
            raise ApiError(400, f"The prompt ({longest} tokens) plus max_tokens ({max_tokens}) exceeds the model's "
                           f"context of {context} tokens", param="max_tokens", code="context_length_exceeded")
        max_tokens = context - longest
    rows = len(prompts) * body.n
    if rows > options.max_batch_size:
        raise ApiError(400, f"n x prompts is {rows}; this server decodes at most {options.max_batch_size} sequences "
                       "per request", param="n")
    return SamplingParams(max_tokens, body.temperature, body.top_p, body.stop_strings_tuple(), body.seed)


class Generation:
    """A job in the engine: its requests (one per prompt) and the queue their events arrive on.

    Holds one of the server's in-flight places from `start` to `close`; over the limit it is a 429.
    Keeps the engine it submitted to: after a hot swap (live.py) its requests finish on the old one.
    """

    def __init__(self, job: Job, state: ServerState):
        self.job, self.state = job, state
        self.queue: asyncio.Queue = asyncio.Queue()
        self.requests: list[Request] = []
        self.engine: GenerationEngine | None = None
        self.first_token_at: float | None = None
        self.counted = False

    def start(self) -> None:
        state = self.state
        if state.in_flight >= state.options.max_concurrent:
            raise errors.busy(state.options.max_concurrent)
        sink = asyncio_sink(self.queue)
        job = self.job
        self.requests = [Request(p, job.params, sink, job.n, job.adapter, first_choice=i * job.n)
                         for i, p in enumerate(job.prompts)]
        state.in_flight += 1
        self.counted = True
        state.metrics.in_flight.inc()
        # The main engine is read in the same step as the job's model (state.served): a swap cannot split them.
        self.engine = job.engine or state.engine
        try:
            for request in self.requests:
                self.engine.submit(request)
        except EngineUnavailable as exc:
            self.close()
            raise ApiError(503, str(exc), type="server_error", code="engine_unavailable") from None
        except EngineClosed:
            self.close()
            raise errors.shutting_down() from None
        state.metrics.prompt_tokens.labels(job.model).inc(job.prompt_tokens)

    def close(self) -> None:
        """Cancel whatever still runs and give the in-flight place back (idempotent)."""
        for request in self.requests:
            request.cancel()
        if self.counted:
            self.counted = False
            self.state.in_flight -= 1
            self.state.metrics.in_flight.dec()

    async def events(self) -> AsyncIterator[Delta | Done]:
        """Events until every choice is done; ApiError on timeout (503) or a failed forward pass (500)."""
        deadline = self.job.started + self.state.options.request_timeout_s
        remaining_choices = self.job.choices
        while remaining_choices:
            try:
                event = await asyncio.wait_for(self.queue.get(), max(deadline - time.monotonic(), 0.001))
            except TimeoutError:
                raise errors.timed_out(self.state.options.request_timeout_s) from None
            if isinstance(event, Unavailable):
                raise ApiError(503, event.message, type="server_error", code="engine_unavailable")
            if isinstance(event, Failed):
                raise ApiError(500, event.message, type="server_error", code="generation_failed")
            if self.first_token_at is None:
                self.first_token_at = time.monotonic()
                self.state.metrics.first_token.labels(self.job.endpoint).observe(self.first_token_at - self.job.started)
            if isinstance(event, Done):
                remaining_choices -= 1
                self.state.metrics.completion_tokens.labels(self.job.model).inc(event.completion_tokens)
            yield event


async def answer(job: Job, state: ServerState, echo: list[str] | None = None) -> BaseModel:
    """The whole answer at once (stream: false)."""
    generation = Generation(job, state)
    generation.start()
    texts = [""] * job.choices
    reasons, tokens = ["stop"] * job.choices, 0
    try:
        async for event in generation.events():
            if isinstance(event, Delta):
                texts[event.choice] += event.text
            else:
                reasons[event.choice], tokens = event.finish_reason, tokens + event.completion_tokens
    finally:
        generation.close()
    job.arrival.log(state, outputs=[Output(t, r) for t, r in zip(texts, reasons)], completion_tokens=tokens,
                    first_token_at=generation.first_token_at)
    usage = Usage.of(job.prompt_tokens, tokens)
    if job.endpoint == CHAT_PATH:
        choices = [ChatChoice(index=i, message=AssistantMessage(content=t), finish_reason=r)
                   for i, (t, r) in enumerate(zip(texts, reasons))]
        return ChatCompletion(id=job.arrival.id, created=now(), model=job.model, choices=choices, usage=usage,
                              system_fingerprint=job.version)
    prefix = [echo[i // job.n] if echo else "" for i in range(job.choices)]
    choices = [CompletionChoice(index=i, text=prefix[i] + t, finish_reason=r)
               for i, (t, r) in enumerate(zip(texts, reasons))]
    return Completion(id=job.arrival.id, created=now(), model=job.model, choices=choices, usage=usage,
                      system_fingerprint=job.version)


def sse(payload: BaseModel | str) -> str:
    return f"data: {payload if isinstance(payload, str) else payload.model_dump_json()}\n\n"


async def stream(generation: Generation, include_usage: bool, echo: list[str] | None = None) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`; errors arrive as an error event.

    `generation` is already started, so a refusal (429, 503) is an HTTP error before the stream begins.
    """
    job = generation.job
    chat = job.endpoint == CHAT_PATH
    ident, created = job.arrival.id, now()

    def chunk(index: int, text: str | None, reason: str | None = None, role: bool = False) -> BaseModel:
        if chat:
            delta = ChoiceDelta(role="assistant" if role else None, content=text)
            return ChatCompletionChunk(id=ident, created=created, model=job.model, system_fingerprint=job.version,
                                       choices=[ChunkChoice(index=index, delta=delta, finish_reason=reason)])
        return Completion(id=ident, created=created, model=job.model, system_fingerprint=job.version,
                          choices=[CompletionChoice(index=index, text=text or "", finish_reason=reason)])

    tokens, texts, reasons = 0, [""] * job.choices, [None] * job.choices
    outcome = None  # (status, error) once the stream reached its end; None: the client left before
    try:
        for index in range(job.choices):
            if chat:
                yield sse(chunk(index, "", role=True))
            elif echo:
                yield sse(chunk(index, echo[index // job.n]))
        async for event in generation.events():
            if isinstance(event, Delta):
                texts[event.choice] += event.text
                yield sse(chunk(event.choice, event.text))
            else:
                tokens += event.completion_tokens
                reasons[event.choice] = event.finish_reason
                yield sse(chunk(event.choice, None if chat else "", event.finish_reason))
        if include_usage:
            usage = Usage.of(job.prompt_tokens, tokens)
            final = (ChatCompletionChunk(id=ident, created=created, model=job.model, choices=[], usage=usage,
                                         system_fingerprint=job.version) if chat
                     else Completion(id=ident, created=created, model=job.model, choices=[], usage=usage,
                                     system_fingerprint=job.version))
            yield sse(final)
        outcome = (200, None)
    except ApiError as exc:
        generation.state.metrics.errors.labels(job.endpoint, str(exc.status)).inc()  # after a 200 began the stream
        outcome = (exc.status, exc.detail.message)
        yield sse(ErrorResponse(error=exc.detail))
    finally:
        status, error = outcome or (CLIENT_LEFT, "the client disconnected before the end of the stream")
        job.arrival.log(generation.state, status, error, [Output(t, r) for t, r in zip(texts, reasons)], tokens,
                        generation.first_token_at)
        generation.close()
    yield sse("[DONE]")


def end_stream(generation: Generation) -> None:
    """A stream response's background task: runs also when the client left before the stream's first event."""
    generation.close()
    generation.job.arrival.log(generation.state, CLIENT_LEFT, "the client disconnected before the stream began")
