"""One server process for the platform: serve's OpenAI API and app, plus the files and jobs API, its runner, its models.

`create_platform_app` builds serve's app (serve/app.py) with three additions: the routes of
routes.py; the job runner, started with the server and stopped before it exits (its running
jobs checkpoint and resume at the next start); and the fine-tuned models of succeeded jobs served
by name from the same process, loaded when first asked for (serve/extra.py). State lives under
TUNEFORGE_HOME/platform: platform.db (SQLite, WAL), files/ and runs/ (one run directory per job).
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI

from tuneforge.platform.defaults import LOADED_MODELS
from tuneforge.paths import home
from tuneforge.platform.db import Database
from tuneforge.platform.events import EventLog
from tuneforge.platform.files import DEFAULT_MAX_UPLOAD_BYTES, FileStore
from tuneforge.platform.jobs import JobCatalog, JobStore
from tuneforge.platform.routes import FILES_PATH, router
from tuneforge.platform.runner import Runner, RunnerSettings
from tuneforge.platform.service import Jobs
from tuneforge.serve.app import create_app
from tuneforge.serve.engine import BASE_ADAPTER
from tuneforge.serve.extra import ExtraModels
from tuneforge.serve.options import ServeOptions
from tuneforge.serve.served import Served


def platform_home() -> Path:
    return home() / "platform"


@dataclass(frozen=True)
class PlatformOptions:
    root: Path | None = None  # default: TUNEFORGE_HOME/platform
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    runner: RunnerSettings = RunnerSettings()
    max_loaded_models: int = LOADED_MODELS  # fine-tuned models kept loaded at once (least recently used goes)

    def __post_init__(self) -> None:
        if self.max_upload_bytes < 1 or self.max_loaded_models < 1:
            raise ValueError("max_upload_bytes and max_loaded_models must be at least 1")


@dataclass
class Platform:
    db: Database
    files: FileStore
    jobs: JobStore
    events: EventLog
    service: Jobs
    runner: Runner


def open_platform(options: PlatformOptions, served_models: dict[str, str]) -> Platform:
    root = options.root or platform_home()
    db = Database(root / "platform.db")
    files, jobs, events = FileStore(db, root / "files"), JobStore(db), EventLog(db)
    (root / "runs").mkdir(parents=True, exist_ok=True)
    return Platform(db, files, jobs, events, Jobs(jobs, files, root / "runs", served_models),
                    Runner(jobs, files, events, options.runner))


def base_models(served: Served) -> dict[str, str]:
    """The names the server serves base models under -> their references (a job may name a base model either way)."""
    return {name.id: name.root for name in served.names.values() if name.adapter in (None, BASE_ADAPTER)}


def create_platform_app(served: Served, serve_options: ServeOptions, options: PlatformOptions = PlatformOptions(),
                        registry=None) -> FastAPI:
    """The app of `tuneforge platform`; `registry`: a registry target for the main model, as in `tuneforge serve`."""
    platform = open_platform(options, base_models(served))
    extra = ExtraModels(JobCatalog(platform.jobs), serve_options, options.max_loaded_models)

    @asynccontextmanager
    async def alongside():
        platform.runner.start()
        try:
            yield
        finally:
            await asyncio.to_thread(platform.runner.stop, options.runner.grace_s + 30)

    app = create_app(served, serve_options, registry, extra=extra, uploads={FILES_PATH: options.max_upload_bytes},
                     alongside=alongside)
    app.state.platform = platform
    app.include_router(router)
    return app
