"""The files and fine-tuning jobs endpoints, in OpenAI's shapes; kept thin: parse, call the stores, shape the answer.

Handlers that only touch the database are plain functions, which FastAPI runs in its thread pool,
so a busy database never stalls the event loop that streams chat answers. Every path is under
/v1/, so the server's API keys guard it (serve/app.py's Guard), and each handler sees only what the
calling key owns (serve/auth.py caller; files.py).
"""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, JSONResponse

from tuneforge.platform.files import UPLOAD_PURPOSES
from tuneforge.platform.protocol import JobRequest, listing
from tuneforge.platform.service import checkpoints_api, job_api
from tuneforge.serve.auth import caller
from tuneforge.serve.errors import ApiError
from tuneforge.train.metrics import read_metrics

FILES_PATH = "/v1/files"
JOBS_PATH = "/v1/fine_tuning/jobs"

router = APIRouter()


def reply(content: dict) -> JSONResponse:
    """JSON straight from plain dicts: FastAPI's generic encoder costs ~10x json.dumps, and clients poll these."""
    return JSONResponse(content)


def platform_of(request: Request):
    return request.app.state.platform


def owner_of(request: Request) -> str | None:
    return caller(request.headers.get("authorization"), request.app.state.server.options.api_keys)


# --- files ----------------------------------------------------------------------------------------


@router.post(FILES_PATH)
async def upload_file(request: Request):
    """multipart/form-data with `file` and `purpose`, as `client.files.create` sends it."""
    platform = platform_of(request)
    form = await request.form(max_files=1, max_fields=8)
    try:
        upload, purpose = form.get("file"), form.get("purpose")
        if upload is None or isinstance(upload, str):
            raise ApiError(400, "Send the file's bytes as the multipart field 'file'", param="file", code="missing_file")
        if purpose not in UPLOAD_PURPOSES:
            raise ApiError(400, f"purpose must be one of {', '.join(UPLOAD_PURPOSES)}, got {purpose!r}",
                           param="purpose", code="invalid_value")
        stored = await asyncio.to_thread(platform.files.add, upload.file, upload.filename, purpose,
                                         owner_of(request))
    finally:
        await form.close()
    return reply(stored.to_api())


@router.get(FILES_PATH)
def list_files(request: Request, purpose: str | None = None, after: str | None = None,
               limit: int = Query(10000, ge=1, le=10000), order: Literal["asc", "desc"] = "desc"):
    found, more = platform_of(request).files.list(owner_of(request), purpose, after, limit, order)
    return reply(listing([f.to_api() for f in found], more))


@router.get(FILES_PATH + "/{file_id}")
def retrieve_file(file_id: str, request: Request):
    return reply(platform_of(request).files.get(file_id, owner_of(request)).to_api())


@router.get(FILES_PATH + "/{file_id}/content")
def file_content(file_id: str, request: Request):
    files = platform_of(request).files
    stored = files.get(file_id, owner_of(request))
    return FileResponse(files.open(stored), filename=stored.filename, media_type="application/octet-stream")


@router.delete(FILES_PATH + "/{file_id}")
def delete_file(file_id: str, request: Request):
    platform_of(request).files.delete(file_id, owner_of(request))
    return reply({"id": file_id, "object": "file", "deleted": True})


# --- fine-tuning jobs ----------------------------------------------------------------------------


@router.post(JOBS_PATH)
def create_job(body: JobRequest, request: Request):
    return reply(job_api(platform_of(request).service.create(body, owner_of(request))))


@router.get(JOBS_PATH)
def list_jobs(request: Request, after: str | None = None, limit: int = Query(20, ge=1, le=1000)):
    metadata = {key[len("metadata["):-1]: value for key, value in request.query_params.items()
                if key.startswith("metadata[") and key.endswith("]")}
    found, more = platform_of(request).jobs.list(owner_of(request), after, limit, metadata)
    return reply(listing([job_api(job) for job in found], more))


@router.get(JOBS_PATH + "/{job_id}")
def retrieve_job(job_id: str, request: Request):
    return reply(job_api(platform_of(request).jobs.find(job_id, owner_of(request))))


@router.post(JOBS_PATH + "/{job_id}/cancel")
def cancel_job(job_id: str, request: Request):
    return reply(job_api(platform_of(request).service.cancel(job_id, owner_of(request))))


@router.post(JOBS_PATH + "/{job_id}/pause")
def pause_job(job_id: str, request: Request):
    return reply(job_api(platform_of(request).service.pause(job_id, owner_of(request))))


@router.post(JOBS_PATH + "/{job_id}/resume")
def resume_job(job_id: str, request: Request):
    return reply(job_api(platform_of(request).service.resume(job_id, owner_of(request))))


@router.get(JOBS_PATH + "/{job_id}/events")
def job_events(job_id: str, request: Request, after: str | None = None, limit: int = Query(20, ge=1, le=1000)):
    platform = platform_of(request)
    job = platform.jobs.find(job_id, owner_of(request))
    found, more = platform.events.list(job.id, after, limit)
    return reply(listing(found, more))


@router.get(JOBS_PATH + "/{job_id}/checkpoints")
def job_checkpoints(job_id: str, request: Request, after: str | None = None, limit: int = Query(10, ge=1, le=1000)):
    checkpoints = checkpoints_api(platform_of(request).jobs.find(job_id, owner_of(request)))
    if after:
        ids = [c["id"] for c in checkpoints]
        if after not in ids:
            raise ApiError(400, f"after: no checkpoint '{after}' in job {job_id}", param="after", code="invalid_value")
        checkpoints = checkpoints[ids.index(after) + 1:]
    return reply(listing(checkpoints[:limit], len(checkpoints) > limit))


@router.get(JOBS_PATH + "/{job_id}/metrics")
def job_metrics(job_id: str, request: Request, after_step: int = -1):
    """tuneforge's own: the run's metrics.jsonl records after `after_step`, oldest first (live loss curves)."""
    job = platform_of(request).jobs.find(job_id, owner_of(request))
    records = [r for r in read_metrics(job.run_path) if int(r.get("step", 0)) > after_step]
    return reply({"object": "list", "data": records, "total_steps": job.total_steps, "status": job.status})
