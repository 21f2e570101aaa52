"""`POST /v1/classify`: texts (or, to an image classifier, base64 images) in, each one's label(s) and class
probabilities out, on the server's main app.

The route shares everything the chat routes have (app.py: API keys, the body-size limit, error
bodies, /metrics counters by endpoint; completions.py: the in-flight limit, the timeout, the
request id and the request log). The classifier runs in classifier.py's worker thread, so the event
loop stays free, and requests waiting together share its forward passes. A server of a language
model answers this route with a 404 that says so; a classifier's server answers the chat routes
with a 400 (completions.pick_model).
"""

from __future__ import annotations

import asyncio
import json

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from tuneforge.models.classifier import Prediction
from tuneforge.monitor.requestlog import Output
from tuneforge.serve import errors
from tuneforge.serve.classifier import ServedClassifier
from tuneforge.serve.completions import REQUEST_ID, Arrival, ServerState, logged_failures
from tuneforge.serve.engine import EngineClosed
from tuneforge.serve.errors import ApiError
from tuneforge.serve.images import request_images
from tuneforge.serve.protocol import ClassifyRequest, ClassifyResponse, ClassifyResult, new_id

CLASSIFY_PATH = "/v1/classify"

router = APIRouter()


@router.post(CLASSIFY_PATH)
async def classify_texts(body: ClassifyRequest, request: Request):
    state: ServerState = request.app.state.server
    served = state.served
    if not isinstance(served, ServedClassifier):
        raise ApiError(404, f"This server serves no classifier: {served.default} is a language model (use "
                       "/v1/chat/completions or /v1/completions); POST /v1/classify needs a run trained with "
                       "task: classify", code="not_found")
    if served.images:
        if body.input is not None:
            raise ApiError(400, "this server serves an image classifier: send images, not input texts", param="input")
        pictures = request_images(body.images)
        texts, contents = [p.image for p in pictures], [p.description for p in pictures]
    else:
        if body.images is not None or body.input is None:
            raise ApiError(400, 'this server serves a text classifier: send {"input": ["text", ...]}', param="input")
        texts = contents = body.texts()
    arrival = Arrival(CLASSIFY_PATH, new_id("clf"), body.model or served.default, served.version,
                      [{"role": "prompt", "content": content} for content in contents])
    with logged_failures(arrival, state):
        if body.model is not None and body.model != served.name:
            raise errors.unknown_model(body.model, [served.name])
        predictions = await classified(texts, body.threshold, state)
    arrival.log(state, outputs=[Output(logged_label(p), "stop") for p in predictions])
    answer = ClassifyResponse(id=arrival.id, model=served.name,
                              data=[ClassifyResult(index=i, **p.as_dict()) for i, p in enumerate(predictions)])
    return JSONResponse(answer.model_dump(mode="json", exclude_none=True), headers={REQUEST_ID: arrival.id})


async def classified(texts: list, threshold: float | None, state: ServerState) -> list[Prediction]:
    """The worker's predictions, within the server's in-flight limit and timeout (429, 503 otherwise)."""
    options = state.options
    if state.in_flight >= options.max_concurrent:
        raise errors.busy(options.max_concurrent)
    worker = state.engine  # read with state.served in one step: the pair that was loaded together
    try:
        future = worker.submit(texts, threshold)
    except EngineClosed:
        raise errors.shutting_down() from None
    state.in_flight += 1
    state.metrics.in_flight.inc()
    try:
        return await asyncio.wait_for(asyncio.wrap_future(future), options.request_timeout_s)
    except TimeoutError:  # wait_for cancelled the future: the worker skips it if it has not started it
        raise errors.timed_out(options.request_timeout_s) from None
    except Exception as exc:
        raise ApiError(500, f"The classifier failed on this request: {type(exc).__name__}: {exc}",
                       type="server_error", code="classification_failed") from exc
    finally:
        state.in_flight -= 1
        state.metrics.in_flight.dec()


def logged_label(prediction: Prediction) -> str:
    """The request log's answer text for one input: the label, or a multi-label prediction's labels as JSON."""
    label = prediction.label
    return json.dumps(list(label), ensure_ascii=False) if isinstance(label, tuple) else label
