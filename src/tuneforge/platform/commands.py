"""`tuneforge platform`: serve a model, plus OpenAI's files and fine-tuning jobs API, in one process."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from tuneforge.errors import ConfigError
from tuneforge.platform.defaults import GRACE_S, LOADED_MODELS, MAX_CONCURRENT_JOBS, MAX_UPLOAD_BYTES


def add_parsers(commands) -> None:
    """`platform`, run by run_platform."""
    from tuneforge.serve.commands import add_serve_arguments

    platform = commands.add_parser(
        "platform", help="serve a model plus OpenAI's files and fine-tuning jobs API (a self-hosted fine-tuning platform)",
        description="Everything `tuneforge serve` does, plus OpenAI's /v1/files and /v1/fine_tuning/jobs API: code "
        "written for client.files.create and client.fine_tuning.jobs.create works against it unchanged (base_url). "
        "Each job trains in its own process as a run directory under $TUNEFORGE_HOME/platform/runs; when it "
        "succeeds its model answers as ft:BASE:SUFFIX:JOBID on /v1/chat/completions from this same process and is "
        "registered in the model registry. State lives in $TUNEFORGE_HOME/platform/platform.db: a restarted server "
        "(even after kill -9) resumes its queue and running jobs from their last checkpoints. With API keys, each "
        "key sees only its own files, jobs and fine-tuned models. See docs/platform.md.")
    add_serve_arguments(platform)
    jobs = platform.add_argument_group("fine-tuning jobs")
    jobs.add_argument("--max-concurrent-jobs", type=int, default=MAX_CONCURRENT_JOBS, metavar="N",
                      help=f"jobs training at once; the rest wait in the queue (default {MAX_CONCURRENT_JOBS})")
    jobs.add_argument("--job-grace", type=float, default=GRACE_S, metavar="SECONDS",
                      help="cancel, pause and shutdown send SIGTERM (checkpoint and stop), then SIGKILL after this "
                      f"(default {GRACE_S:g})")
    jobs.add_argument("--max-upload-mb", type=float, default=MAX_UPLOAD_BYTES / 2**20, metavar="MB",
                      help=f"larger uploads get 413 (default {MAX_UPLOAD_BYTES >> 20})")
    jobs.add_argument("--max-loaded-models", type=int, default=LOADED_MODELS, metavar="N",
                      help="fine-tuned models kept in memory at once; asking for another unloads the least recently "
                      f"used (default {LOADED_MODELS})")
    jobs.add_argument("--platform-dir", type=Path, metavar="DIR",
                      help="where files, runs and platform.db live (default $TUNEFORGE_HOME/platform)")
    platform.set_defaults(func=run_platform)


def run_platform(args: argparse.Namespace, console: Console) -> int:
    from tuneforge.models.classifier import is_classifier
    from tuneforge.platform.app import PlatformOptions, create_platform_app, platform_home  # torch, FastAPI
    from tuneforge.platform.runner import RunnerSettings
    from tuneforge.registry.store import registry_path
    from tuneforge.serve.commands import announce, load_for_serving, options_from, run_app

    if is_classifier(args.model):
        raise ConfigError(f"tuneforge platform: {args.model} is a classifier; serve a generative model (the jobs it "
                          "runs make chat models)")
    serve_options = options_from(args)
    try:
        options = PlatformOptions(
            root=args.platform_dir, max_upload_bytes=int(args.max_upload_mb * 2**20), max_loaded_models=args.max_loaded_models,
            runner=RunnerSettings(max_concurrent=args.max_concurrent_jobs, grace_s=args.job_grace,
                                  registry=registry_path(args.registry).resolve()))
    except ValueError as exc:
        raise ConfigError(f"tuneforge platform: {exc}") from exc
    served, target, serve_options = load_for_serving(args, serve_options, console)
    app = create_platform_app(served, serve_options, options, target)
    announce(served, serve_options, target, console)
    root = (options.root or platform_home()).resolve()
    console.print(f"fine-tuning jobs: {root} (at most {options.runner.max_concurrent} training at once; uploads up to "
                  f"{args.max_upload_mb:g} MB); models registered in {options.runner.registry}", highlight=False)
    return run_app(app, serve_options)
