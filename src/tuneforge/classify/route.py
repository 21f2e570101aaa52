"""`POST /v1/classify` (texts in, each one's label(s) and class probabilities out), and a server for a classifier.

The route is an APIRouter that reads the classifier from `app.state.classifier`, so it can be
included in any FastAPI app; `create_classify_app` builds the app `tuneforge serve` runs for a
classifier run, with the chat server's error bodies, API keys and body-size limit (serve/app.py),
`/v1/models` and `/health`.  The model runs in a worker thread, one request at a time (a forward
pass already uses every core), so the event loop stays free to refuse or time out the rest.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError
from rich.console import Console
from starlette.exceptions import HTTPException

from tuneforge.models.classifier import Classifier, Prediction
from tuneforge.serve import errors
from tuneforge.serve.errors import ApiError
from tuneforge.serve.options import ServeOptions
from tuneforge.serve.protocol import Health, ModelCard, ModelList, now

CLASSIFY_PATH = "/v1/classify"
MAX_TEXTS = 256  # per request; more get 400 (send them in several requests)


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    input: str | list[str] = Field(validation_alias=AliasChoices("input", "texts"),
                                   description="a text or a list of texts (also accepted as `texts`)")
    threshold: float | None = Field(None, gt=0, lt=1, description="multi-label: override the saved threshold")

    @field_validator("input")
    @classmethod
    def _some_texts(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not value:
            raise PydanticCustomError("no_texts", "give at least one text")
        if isinstance(value, list) and len(value) > MAX_TEXTS:
            raise PydanticCustomError("too_many_texts", f"at most {MAX_TEXTS} texts per request, got {len(value)}; "
                                      "send them in several requests")
        return value


class ClassifyResult(BaseModel):
    index: int
    label: str | None = None  # single-label classifiers
    labels: list[str] | None = None  # multi-label classifiers: every class at the threshold
    scores: dict[str, float]  # every class's probability


class ClassifyResponse(BaseModel):
    object: str = "list"
    model: str
    data: list[ClassifyResult]


@dataclass
class ServedClassifier:
    classifier: Classifier
    name: str
    root: str  # where it was loaded from
    created: int = field(default_factory=now)
    in_flight: int = 0  # requests admitted and not yet answered (counted on the event loop's thread)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def classify(self, texts: list[str], threshold: float | None) -> list[Prediction]:
        with self.lock:
            return self.classifier.classify(texts, threshold=threshold)


router = APIRouter()


@router.post(CLASSIFY_PATH, response_model_exclude_none=True)
async def classify_texts(body: ClassifyRequest, request: Request) -> ClassifyResponse:
    served: ServedClassifier | None = getattr(request.app.state, "classifier", None)
    options: ServeOptions = getattr(request.app.state, "options", ServeOptions())
    if served is None:
        raise ApiError(404, "This server serves no classifier (start it with a run trained with task: classify)",
                       code="not_found")
    if body.model is not None and body.model != served.name:
        raise errors.unknown_model(body.model, [served.name])
    if served.in_flight >= options.max_concurrent:
        raise errors.busy(options.max_concurrent)
    texts = [body.input] if isinstance(body.input, str) else body.input
    served.in_flight += 1
    try:
        predictions = await asyncio.wait_for(asyncio.to_thread(served.classify, texts, body.threshold),
                                             options.request_timeout_s)
    except TimeoutError:
        raise errors.timed_out(options.request_timeout_s) from None
    finally:  # a timed-out request's forward pass still runs to its end in the worker thread
        served.in_flight -= 1
    return ClassifyResponse(model=served.name, data=[ClassifyResult(index=i, **p.as_dict())
                                                     for i, p in enumerate(predictions)])


def create_classify_app(served: ServedClassifier, options: ServeOptions) -> FastAPI:
    from tuneforge.serve.app import Guard, api_error, http_error, internal_error, invalid_request
    from tuneforge.serve.auth import KeyCheck

    app = FastAPI(title="tuneforge classifier", summary="Text classification with a tuneforge classifier",
                  docs_url="/docs", redoc_url=None)
    app.state.classifier, app.state.options = served, options
    app.include_router(router)

    @app.get("/v1/models")
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=served.name, created=served.created, root=served.root)])

    @app.get("/health")
    async def health():
        running = min(served.in_flight, 1)
        return JSONResponse(Health(status="ok", models=[served.name], running=running,
                                   waiting=served.in_flight - running).model_dump())

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, internal_error)
    app.add_middleware(Guard, keys=KeyCheck(options.api_keys), max_body_bytes=options.max_body_bytes)
    return app


def serve_classifier(reference: str, name: str | None, options: ServeOptions, console: Console,
                     adapters: list[str] = ()) -> int:
    """What `tuneforge serve` does for a classifier run: load it, print where it listens, run uvicorn."""
    import uvicorn

    from tuneforge.models.classifier import classifier_dir, load_classifier
    from tuneforge.errors import ConfigError

    if adapters:
        raise ConfigError(f"{reference} is a classifier; --adapter serves LoRA adapters of chat models only")
    console.print(f"loading classifier {reference} ...")
    classifier = load_classifier(reference)
    served = ServedClassifier(classifier, name or reference.rstrip("/") or reference, str(classifier_dir(reference)))
    app = create_classify_app(served, options)
    url = f"http://{options.host}:{options.port}"
    labels = classifier.labels
    console.print(f"classifier: {served.name} ({len(labels.names)} classes, "
                  f"{'multi-label' if labels.multi_label else 'single-label'}: {', '.join(labels.names)})\n"
                  f"POST {url}{CLASSIFY_PATH} with {{\"input\": [\"text\", ...]}}    models: {url}/v1/models\n"
                  + (f"API keys: {len(options.api_keys)} configured" if options.api_keys
                     else "API keys: none (anyone who can reach the port can use it; see --api-key)"), highlight=False)
    config = uvicorn.Config(app, host=options.host, port=options.port, log_level="info",
                            timeout_graceful_shutdown=int(options.request_timeout_s) + 5)
    uvicorn.Server(config).run()
    return 0
