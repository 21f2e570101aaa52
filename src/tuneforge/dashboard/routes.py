"""The dashboard's HTTP side: the page at `/`, its static files, and the JSON endpoints under /dashboard/api.

Kept thin: each endpoint parses its query or body and hands over to runs.py, compare.py,
registry_view.py, monitoring.py or inspection.py. Endpoints that read files or load a tokenizer
are plain functions, which FastAPI runs in its thread pool, so a slow disk never stalls the
event loop that streams chat answers. The API paths are guarded by the server's API keys like
/v1 (serve/app.py's Guard); the page and its script are not secret and load without a key.
Errors have OpenAI's shape ({"error": {"message", "type", "code"}}) like the rest of the server.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from tuneforge.dashboard import compare, inspection, monitoring, registry_view, runs
from tuneforge.dashboard.settings import DashboardSettings
from tuneforge.errors import TuneforgeError
from tuneforge.registry.store import ALIASES, RegistryError, registry_path

API = "/dashboard/api"
SCRIPTS = ("app.js", "common.js", "charts.js", "jobs.js", "runs.js", "registry.js", "monitoring.js", "chat.js")
STATIC = {**{name: "text/javascript" for name in SCRIPTS}, "style.css": "text/css"}
REPORT_FILES = {".html": "text/html", ".png": "image/png"}


class Promotion(BaseModel):
    version: str
    alias: str = "production"
    force: bool = False


class Rollback(BaseModel):
    alias: str = "production"


class Registration(BaseModel):
    run: str
    parent: str | None = None
    note: str | None = None


class Comparison(BaseModel):
    runs: list[str]
    data: str
    limit: int | None = 20
    max_new_tokens: int = 32


def error(status: int, message: str, code: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}},
                        status_code=status)


def answered(work):
    """Run `work`; a tuneforge error becomes a 4xx with its message (an unknown run 404, others 400)."""
    try:
        return work()
    except runs.UnknownRun as exc:
        return error(404, str(exc), "run_not_found")
    except RegistryError as exc:
        return error(404 if "no model version" in str(exc) or "no model registry" in str(exc) else 400, str(exc),
                     "registry_error")
    except (TuneforgeError, ValueError) as exc:
        return error(400, str(exc), "invalid_request")


def page(name: str) -> str:
    return resources.files("tuneforge.dashboard").joinpath(f"static/{name}").read_text(encoding="utf-8")


def job_runs(app) -> tuple[Path, ...]:
    """Where the jobs API (platform/app.py) keeps one run directory per job, when this server runs jobs.

    Read from the app at request time (`app.state.platform.service.runs`), because the platform adds
    itself to serve's app after the dashboard is mounted; tests/dashboard/test_jobs_browser.py pins it."""
    platform = getattr(app.state, "platform", None)
    folder = getattr(getattr(platform, "service", None), "runs", None)
    return (Path(folder),) if folder else ()


def dashboard_router(settings: DashboardSettings) -> APIRouter:
    """The router serve/app.py includes: the page, its files and the JSON API over `settings`."""
    router = APIRouter()
    registry_file = registry_path(settings.registry)
    index_of = lambda request: runs.RunIndex((Path(settings.runs_root), *job_runs(request.app)))  # noqa: E731

    @router.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def dashboard_page() -> HTMLResponse:
        return HTMLResponse(page("index.html"))

    @router.get("/dashboard/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in STATIC:
            return error(404, f"no static file {name!r}", "not_found")
        return Response(page(name), media_type=STATIC[name], headers={"Cache-Control": "no-cache"})

    @router.get(f"{API}/settings")
    def dashboard_settings(request: Request) -> dict:
        jobs = getattr(request.app.state, "platform", None) is not None  # the jobs API is mounted (platform/app.py)
        return {"runs_root": str(settings.runs_root), "registry": str(registry_file),
                "log_db": str(settings.log_db) if settings.log_db else None, "model": settings.model,
                "aliases": list(ALIASES), "jobs": jobs}

    @router.get(f"{API}/runs")
    def list_runs(request: Request):
        return answered(lambda: {"root": str(settings.runs_root),
                                 "runs": [runs.summary(name, path) for name, path in index_of(request).names()]})

    @router.get(f"{API}/run")
    def run_detail(run: str, request: Request):
        return answered(lambda: runs.detail(run, index_of(request).find(run)))

    @router.get(f"{API}/run/curve")
    def run_curve(run: str, request: Request, start: int = 0):
        def read():
            run_dir = index_of(request).find(run)
            return {**runs.curve(run_dir, max(0, start)), "status": runs.status(run_dir)}

        return answered(read)

    @router.get(f"{API}/compare")
    def compare_stored(request: Request, run: list[str] = Query(default=[])):
        return answered(lambda: compare.stored(index_of(request), run))

    @router.post(f"{API}/compare")
    def compare_start(body: Comparison, request: Request):
        return answered(lambda: compare.start_evaluation(index_of(request), body.runs, body.data, body.limit,
                                                         body.max_new_tokens))

    @router.get(f"{API}/compare/evaluations")
    def compare_list(request: Request):
        return answered(lambda: {"evaluations": compare.evaluations(index_of(request))})

    @router.get(f"{API}/compare/{{comparison}}/report/{{name}}", include_in_schema=False)
    def compare_report(comparison: str, name: str):
        folder = (Path(settings.runs_root) / compare.COMPARE_DIR / comparison / "report").resolve()
        path = (folder / name).resolve()
        if path.parent != folder or path.suffix not in REPORT_FILES or not path.is_file():
            return error(404, f"no report file {name!r} for comparison {comparison!r}", "not_found")
        return FileResponse(path, media_type=REPORT_FILES[path.suffix])

    @router.get(f"{API}/registry")
    def registry_state():
        return answered(lambda: registry_view.state(registry_file))

    @router.post(f"{API}/registry/promote")
    def registry_promote(body: Promotion):
        return answered(lambda: registry_view.promote_version(registry_file, body.version, body.alias, body.force))

    @router.post(f"{API}/registry/rollback")
    def registry_rollback(body: Rollback):
        return answered(lambda: registry_view.rollback_alias(registry_file, body.alias))

    @router.post(f"{API}/registry/register")
    def registry_register(body: Registration, request: Request):
        return answered(lambda: registry_view.register(registry_file, index_of(request).find(body.run), body.parent,
                                                       body.note))

    @router.get(f"{API}/monitor/report")
    def monitor_report(since: str | None = None, until: str | None = None):
        return answered(lambda: monitoring.report(settings.log_db, since, until))

    @router.get(f"{API}/monitor/drift")
    def monitor_drift(request: Request, run: str | None = None, data: str | None = None, since: str | None = None):
        return answered(lambda: monitoring.drift_check(settings.log_db, index_of(request).find(run) if run else None,
                                                       data, since))

    @router.post(f"{API}/inspect")
    async def inspect(request: Request, filename: str = "upload.jsonl", model: str | None = None,
                      max_seq_length: int = 1024):
        content = await request.body()
        return await run_in_threadpool(answered, lambda: inspection.inspect_upload(
            content, filename, model or settings.model, max_seq_length=max_seq_length))

    return router
