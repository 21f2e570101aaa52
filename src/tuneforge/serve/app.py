"""The FastAPI app: routes, OpenAI-style error bodies, the guard (body size, API keys), metrics, lifespan.

One app serves a language model (chat and text completions, engine.py) or a classifier
(/v1/classify, classifier.py), with the same guard, limits, request log, metrics and shutdown.
The engine (or the classifier's worker) thread starts with the app and, at shutdown, drains: while
in-flight responses (streams included) finish, the server still accepts connections and answers
/health and new completions with 503 (serve/shutdown.py); then uvicorn stops listening, and the
engine finishes whatever it still holds before the process exits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from dataclasses import replace

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from tuneforge.dashboard.routes import API as DASHBOARD_API, dashboard_router
from tuneforge.dashboard.settings import DashboardSettings
from tuneforge.monitor.requestlog import RequestLog
from tuneforge.serve.auth import KeyCheck
from tuneforge.serve.classifier import ClassifierWorker, ServedClassifier
from tuneforge.serve.classify import CLASSIFY_PATH
from tuneforge.serve.classify import router as classify_router
from tuneforge.serve.completions import CHAT_PATH, COMPLETIONS_PATH, ServerState
from tuneforge.serve.errors import ApiError, validation_error
from tuneforge.serve.extra import ExtraModels
from tuneforge.serve.live import AliasWatcher, EngineTotals, RegistryTarget, new_engine
from tuneforge.serve.metrics import ClassifierCollector, ServerMetrics
from tuneforge.serve.options import ServeOptions
from tuneforge.serve.routes import FEEDBACK_PATH, router
from tuneforge.serve.served import Served

log = logging.getLogger("tuneforge.serve")
ENDPOINTS = {CHAT_PATH, COMPLETIONS_PATH, CLASSIFY_PATH, FEEDBACK_PATH, "/v1/models", "/health", "/metrics", "/"}


GUARDED = ("/v1/", DASHBOARD_API + "/")  # paths that need an API key when the server has keys


def create_app(served: Served | ServedClassifier, options: ServeOptions, registry: RegistryTarget | None = None,
               extra: ExtraModels | None = None, uploads: dict[str, int] | None = None,
               alongside: Callable[[], AbstractAsyncContextManager] | None = None,
               dashboard: DashboardSettings | None = None) -> FastAPI:
    """`registry`: where `served` came from (`registry:NAME`); an alias is followed across promotions (live.py).

    `extra`: more models served by name (extra.py). `uploads`: POST paths whose bodies are streamed to the route
    rather than buffered, with their own size limit (the jobs API's file upload). `alongside`: what runs while the
    server does (the jobs runner, platform/app.py), entered once the engine started and left before it drains.
    `dashboard`: where the web dashboard at `/` finds runs and the registry (default: the options' runs_dir
    and registry_db; the request log is always this server's own)."""
    request_log = RequestLog(options.log_settings()) if options.log_db else None  # None: --no-log
    if isinstance(served, ServedClassifier):
        engine, engines = ClassifierWorker(served.classifier, options.max_batch_size, threads=options.threads), None
        metrics = ServerMetrics(engine, request_log, ClassifierCollector(engine))
    else:
        engine = new_engine(served, options)
        engines = EngineTotals(engine)  # /metrics reads through this: the engine changes at each swap
        metrics = ServerMetrics(engines, request_log)
    state = ServerState(served, engine, options, metrics, request_log=request_log, extra=extra)

    follow = registry if registry and registry.follows and engines is not None else None  # classifiers: run dirs only

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.engine.start()  # not the local `engine`: a closure holding it would keep its model alive after a swap
        if request_log:
            request_log.start()
        watcher = AliasWatcher(follow, state, engines, asyncio.get_running_loop()).start() if follow else None
        async with alongside() if alongside else nullcontext():
            yield
        if extra is not None:
            await extra.close(options.request_timeout_s)
        if watcher and not await asyncio.to_thread(watcher.stop, options.request_timeout_s):
            log.warning("shutdown: the registry watcher is still loading or draining; exiting anyway")
        if not await asyncio.to_thread(state.engine.shutdown, options.request_timeout_s):
            log.warning("shutdown: generation still running after %s s; exiting anyway", options.request_timeout_s)
        if request_log and not await asyncio.to_thread(request_log.close, options.request_timeout_s):
            log.warning("shutdown: the request log is still writing after %s s; exiting anyway", options.request_timeout_s)

    app = FastAPI(title="tuneforge", summary="OpenAI-compatible server for tuneforge models", lifespan=lifespan,
                  docs_url="/docs", redoc_url=None)
    app.state.server = state
    app.include_router(router)
    app.include_router(classify_router)
    board = dashboard or DashboardSettings(options.runs_dir,
                                           options.registry_db or (registry.registry if registry else None))
    root = served.root if isinstance(served, ServedClassifier) else served.names[served.default].root
    board = replace(board, log_db=options.log_db, model=board.model or root)
    app.include_router(dashboard_router(board))
    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, internal_error)
    app.add_middleware(Guard, keys=KeyCheck(options.api_keys), max_body_bytes=options.max_body_bytes,
                       uploads=uploads or {})
    app.add_middleware(Metered, metrics=state.metrics)  # outermost: sees the guard's refusals too
    return app


async def api_error(request, exc: ApiError):
    return exc.response()


async def invalid_request(request, exc: RequestValidationError):
    return validation_error(exc.errors()).response()


async def http_error(request, exc: HTTPException):
    kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    return ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", code=kind).response()


async def internal_error(request, exc: Exception):
    log.exception("unhandled error on %s", request.url.path)
    return ApiError(500, f"Internal server error: {type(exc).__name__}", type="server_error").response()


class Guard:
    """Refuses before the body is parsed: 401 without a valid API key on /v1, 413 for an oversized body.

    A body is buffered whole up to the limit, except on an upload path (`uploads`: path -> limit), whose body goes
    to the route as it arrives, counted: past its limit, reading it raises the 413 (tests/platform/test_files.py)."""

    def __init__(self, app, keys: KeyCheck, max_body_bytes: int, uploads: dict[str, int] | None = None):
        self.app, self.keys, self.limit, self.uploads = app, keys, max_body_bytes, uploads or {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            if scope["path"].startswith(GUARDED):
                self.keys(headers.get("authorization"))
            if scope["method"] == "POST" and scope["path"] in self.uploads:
                receive = counted_body(headers.get("content-length"), receive, self.uploads[scope["path"]])
            elif scope["method"] == "POST":
                receive = await self.buffered_body(headers.get("content-length"), receive)
        except ApiError as exc:
            return await exc.response()(scope, receive, send)
        await self.app(scope, receive, send)

    async def buffered_body(self, length: str | None, receive):
        """Read the body up to the limit (a chunked body has no length to check first), then replay it."""
        if length and length.isdigit() and int(length) > self.limit:
            raise too_large(self.limit)
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.limit:
                raise too_large(self.limit)
            if not message.get("more_body", False):
                break

        async def replay():
            return messages.pop(0) if messages else await receive()

        return replay


def counted_body(length: str | None, receive, limit: int):
    """`receive`, refusing a declared length over `limit` at once and raising the 413 once more arrived than that."""
    if length and length.isdigit() and int(length) > limit:
        raise too_large(limit)
    size = 0

    async def counted():
        nonlocal size
        message = await receive()
        size += len(message.get("body", b""))
        if size > limit:
            raise too_large(limit)
        return message

    return counted


def too_large(limit: int) -> ApiError:
    return ApiError(413, f"The request body is larger than this server's limit of {limit} bytes",
                    code="request_too_large")


class Metered:
    """Counts requests by endpoint and status and times them to their last byte (streams included)."""

    def __init__(self, app, metrics: ServerMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
        started, status, recorded = time.monotonic(), [500], [False]

        def finish():
            if not recorded[0]:
                recorded[0] = True
                self.record(endpoint, status[0], started)

        async def timed_send(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                finish()

        try:
            await self.app(scope, receive, timed_send)
        finally:  # also a stream the client left early, or an error with no response sent
            finish()

    def record(self, endpoint: str, status: int, started: float) -> None:
        self.metrics.requests.labels(endpoint, str(status)).inc()
        self.metrics.latency.labels(endpoint).observe(time.monotonic() - started)
        if status >= 400:
            self.metrics.errors.labels(endpoint, str(status)).inc()
