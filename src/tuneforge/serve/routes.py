"""The HTTP routes, kept thin: parse (pydantic), hand over to completions.py, return what it builds."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.background import BackgroundTask

from tuneforge.monitor.requestlog import FeedbackRecord, LogUnavailable
from tuneforge.serve import errors
from tuneforge.serve.auth import caller
from tuneforge.serve.completions import (
    CHAT_PATH, COMPLETIONS_PATH, REQUEST_ID, Arrival, Generation, Job, ServerState, answer, chat_job, completion_job,
    end_stream, logged_failures, stream,
)
from tuneforge.serve.errors import ApiError
from tuneforge.serve.protocol import (
    ChatCompletionRequest, CompletionRequest, FeedbackReceipt, FeedbackRequest, Health, ModelCard, ModelList,
)

FEEDBACK_PATH = "/v1/feedback"

router = APIRouter()


def state_of(request: Request) -> ServerState:
    return request.app.state.server


def caller_of(request: Request) -> str | None:
    """The calling key's id (auth.caller): what the jobs API's files, jobs and fine-tuned models belong to."""
    return caller(request.headers.get("authorization"), state_of(request).options.api_keys)


async def ready(model: str | None, request: Request) -> None:
    """An extra model (extra.py) named by a request is loaded before the request is built; 404 if the caller cannot see it."""
    state = state_of(request)
    if state.extra is not None:
        await state.extra.ensure(model, caller_of(request), state.served)


def version_header(job: Job) -> dict[str, str]:
    """X-Model-Version: the registry version that answers, when serving registry:ALIAS (live.py)."""
    return {"X-Model-Version": job.version} if job.version else {}


async def respond(job: Job, state: ServerState, streaming: bool, include_usage: bool, echo: list[str] | None = None):
    headers = {REQUEST_ID: job.arrival.id, **version_header(job)}
    if not streaming:
        return JSONResponse((await answer(job, state, echo)).model_dump(mode="json"), headers=headers)
    generation = Generation(job, state)
    generation.start()  # a refusal here is still an HTTP error, before any event is sent
    # The background task also runs when the client left before the stream's first event.
    return StreamingResponse(stream(generation, include_usage, echo), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers},
                             background=BackgroundTask(end_stream, generation))


@router.post(CHAT_PATH)
async def chat_completions(body: ChatCompletionRequest, request: Request):
    state = state_of(request)
    arrival = Arrival.of(body, state)
    with logged_failures(arrival, state):
        await ready(body.model, request)  # returns at once (no other request runs between) unless it loads a model
        return await respond(chat_job(body, state, arrival), state, body.stream, body.include_usage())


@router.post(COMPLETIONS_PATH)
async def completions(body: CompletionRequest, request: Request):
    state = state_of(request)
    echo = body.prompts() if body.echo else None
    arrival = Arrival.of(body, state)
    with logged_failures(arrival, state):
        await ready(body.model, request)
        return await respond(completion_job(body, state, arrival), state, body.stream, body.include_usage(), echo)


@router.post(FEEDBACK_PATH)
async def feedback(body: FeedbackRequest, request: Request) -> FeedbackReceipt:
    """A rating (and maybe a corrected answer) of a logged request, stored beside it in the request log."""
    request_log = state_of(request).request_log
    if request_log is None:
        raise ApiError(503, "This server keeps no request log (it was started with --no-log), so it cannot store "
                       "feedback", type="server_error", code="request_log_off")
    record = FeedbackRecord(body.request_id, body.rating, body.correction, body.comment)
    wait_s = request_log.settings.busy_timeout_s + 10  # the writer first writes what was queued before it
    try:
        row = await asyncio.wait_for(asyncio.wrap_future(request_log.add_feedback(record)), wait_s)
    except (LogUnavailable, TimeoutError) as exc:
        reason = str(exc) if isinstance(exc, LogUnavailable) else f"the request log did not answer within {wait_s:g} s"
        raise ApiError(503, f"The feedback could not be stored: {reason}", type="server_error",
                       code="request_log_unavailable") from None
    if row is None:
        raise ApiError(404, f"No logged request has the id '{body.request_id}' (the `id` of a completion, also its "
                       f"{REQUEST_ID} header)", param="request_id", code="request_not_found")
    return FeedbackReceipt(id=row, request_id=body.request_id, rating=body.rating, created=int(record.created))


@router.get("/v1/models")
async def models(request: Request) -> ModelList:
    state = state_of(request)
    extra = state.extra.cards(caller_of(request)) if state.extra is not None else []
    return ModelList(data=state.served.cards() + extra)


@router.get("/v1/models/{model_id:path}")
async def model(model_id: str, request: Request) -> ModelCard:
    state = state_of(request)
    extra = state.extra.cards(caller_of(request)) if state.extra is not None else []
    for card in state.served.cards() + extra:
        if card.id == model_id:
            return card
    raise errors.unknown_model(model_id, list(state.served.names) + [card.id for card in extra])


@router.get("/health")
async def health(request: Request):
    state = state_of(request)
    report = Health(status="ok" if state.engine.alive else "draining", models=list(state.served.names),
                    running=state.engine.running, waiting=state.engine.queue_depth, version=state.served.version)
    return JSONResponse(report.model_dump(), status_code=200 if report.status == "ok" else 503)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(state_of(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)

