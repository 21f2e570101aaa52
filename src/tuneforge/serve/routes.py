"""The HTTP routes, kept thin: parse (pydantic), hand over to completions.py, return what it builds."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.background import BackgroundTask

from tuneforge.serve import errors
from tuneforge.serve.completions import (
    CHAT_PATH, COMPLETIONS_PATH, Generation, Job, ServerState, answer, chat_job, completion_job, stream,
)
from tuneforge.serve.protocol import ChatCompletionRequest, CompletionRequest, Health, ModelCard, ModelList

router = APIRouter()


def state_of(request: Request) -> ServerState:
    return request.app.state.server


async def respond(job: Job, state: ServerState, streaming: bool, include_usage: bool, echo: list[str] | None = None):
    if not streaming:
        return await answer(job, state, echo)
    generation = Generation(job, state)
    generation.start()  # a refusal here is still an HTTP error, before any event is sent
    # The background close also runs when the client left before the stream's first event.
    return StreamingResponse(stream(generation, include_usage, echo), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                             background=BackgroundTask(generation.close))


@router.post(CHAT_PATH)
async def chat_completions(body: ChatCompletionRequest, request: Request):
    state = state_of(request)
    return await respond(chat_job(body, state), state, body.stream, body.include_usage())


@router.post(COMPLETIONS_PATH)
async def completions(body: CompletionRequest, request: Request):
    state = state_of(request)
    echo = body.prompts() if body.echo else None
    return await respond(completion_job(body, state), state, body.stream, body.include_usage(), echo)


@router.get("/v1/models")
async def models(request: Request) -> ModelList:
    return ModelList(data=state_of(request).served.cards())


@router.get("/v1/models/{model_id:path}")
async def model(model_id: str, request: Request) -> ModelCard:
    served = state_of(request).served
    for card in served.cards():
        if card.id == model_id:
            return card
    raise errors.unknown_model(model_id, list(served.names))


@router.get("/health")
async def health(request: Request):
    state = state_of(request)
    report = Health(status="ok" if state.engine.alive else "draining", models=list(state.served.names),
                    running=state.engine.running, waiting=state.engine.queue_depth)
    return JSONResponse(report.model_dump(), status_code=200 if report.status == "ok" else 503)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(state_of(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/", response_class=HTMLResponse)
async def chat_page() -> HTMLResponse:
    return HTMLResponse(resources.files("tuneforge.serve").joinpath("static/chat.html").read_text())
