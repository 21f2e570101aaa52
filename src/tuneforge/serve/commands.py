"""`tuneforge serve`: its command-line options, and starting uvicorn on the app."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from rich.console import Console

from tuneforge.dashboard.settings import DEFAULT_RUNS_ROOT
from tuneforge.errors import ConfigError
from tuneforge.monitor.requestlog import DEFAULT_LOG_DB
from tuneforge.serve.options import API_KEYS_ENV, DECODE_DTYPES, MAX_TEXTS, ServeOptions, api_keys_from

DEFAULTS = ServeOptions()


def add_parsers(commands) -> None:
    """`serve`, run by run_serve."""
    serve = commands.add_parser(
        "serve", help="serve a model over an OpenAI-compatible HTTP API",
        description="Serve a model (a run directory, checkpoint, local model directory, hub id, .gguf file or "
        "embedded:smollm2-135m-instruct) over an OpenAI-compatible API: /v1/chat/completions, /v1/completions "
        "(streaming too), /v1/models, /health, /metrics (Prometheus) and a web dashboard at / (runs, registry, "
        "monitoring, data, chat). Concurrent requests are decoded together in shared batches. A classifier run "
        "(task: classify) serves POST /v1/classify instead of the chat routes, with the same limits, API keys, "
        "request log and metrics. A LoRA run serves its adapter under MODEL_OR_RUN and the base "
        "model under its own name; --adapter adds more adapters, each addressable by name. registry:ALIAS (e.g. "
        "registry:production) serves the version a registry alias names, under the alias, and follows promote and "
        "rollback without a restart. Ctrl-C or SIGTERM finishes the requests in flight, then exits.")
    serve.set_defaults(func=run_serve)
    add_serve_arguments(serve)


def add_serve_arguments(serve: argparse.ArgumentParser) -> None:
    """MODEL_OR_RUN and every serving option (also `tuneforge platform`'s, platform/commands.py)."""
    serve.add_argument("model", metavar="MODEL_OR_RUN")
    serve.add_argument("--adapter", dest="adapters", action="append", default=[], metavar="NAME=PATH",
                       help="also serve a LoRA adapter (a run dir, checkpoint or adapter dir) as model NAME (repeatable)")
    serve.add_argument("--served-model-name", metavar="NAME", help="the main model's name in the API (default: MODEL_OR_RUN)")
    serve.add_argument("--host", default=DEFAULTS.host, help=f"address to listen on (default {DEFAULTS.host}; "
                       "0.0.0.0 for every interface)")
    serve.add_argument("--port", type=int, default=DEFAULTS.port, help=f"default {DEFAULTS.port}")
    serve.add_argument("--api-key", dest="api_keys", action="append", default=[], metavar="KEY",
                       help=f"require 'Authorization: Bearer KEY' (repeatable; also from ${API_KEYS_ENV}, "
                       "comma-separated, which keeps keys out of the process list)")
    serve.add_argument("--max-prompt-tokens", type=int, metavar="N", default=DEFAULTS.max_prompt_tokens,
                       help=f"longer prompts get 400 (default {DEFAULTS.max_prompt_tokens})")
    serve.add_argument("--max-new-tokens", type=int, metavar="N", default=DEFAULTS.max_new_tokens,
                       help=f"the most a request may ask for, and the default (default {DEFAULTS.max_new_tokens})")
    serve.add_argument("--max-concurrent", type=int, metavar="N", default=DEFAULTS.max_concurrent,
                       help=f"requests in flight; more get 429 (default {DEFAULTS.max_concurrent})")
    serve.add_argument("--request-timeout", type=float, default=DEFAULTS.request_timeout_s, metavar="SECONDS",
                       help=f"unfinished requests get 503 after this (default {DEFAULTS.request_timeout_s:g})")
    serve.add_argument("--max-batch-size", type=int, metavar="N", default=DEFAULTS.max_batch_size,
                       help=f"sequences decoded together (default {DEFAULTS.max_batch_size})")
    serve.add_argument("--no-batching", dest="batching", action="store_false",
                       help="decode one request at a time (for comparison)")
    serve.add_argument("--log-db", default=DEFAULT_LOG_DB, metavar="PATH",
                       help=f"the request log, an SQLite file that every request and its feedback are written to "
                       f"(default ./{DEFAULT_LOG_DB}; read by `tuneforge monitor` and `tuneforge curate`)")
    serve.add_argument("--no-log", action="store_true", help="log no requests (POST /v1/feedback is then refused)")
    serve.add_argument("--log-retention-days", type=float, metavar="DAYS", default=DEFAULTS.log_retention_days,
                       help=f"delete logged requests older than this (default {DEFAULTS.log_retention_days:g})")
    serve.add_argument("--log-max-rows", type=int, metavar="N", default=DEFAULTS.log_max_rows,
                       help=f"keep at most this many logged requests, the newest (default {DEFAULTS.log_max_rows})")
    serve.add_argument("--log-redact-pii", action="store_true", help="replace emails, phone numbers, IP addresses "
                       "and card numbers in prompts, outputs and feedback before they are written")
    serve.add_argument("--dtype", choices=DECODE_DTYPES, default=DEFAULTS.dtype,
                       help="the weights' dtype while decoding (default float32: the same greedy answers as plain "
                       "transformers); bfloat16 decodes about 2x faster on CPUs with native bf16 (AVX512-BF16/AMX), "
                       "with answers that may differ in wording; int8 (weight-only, CPU) is faster again for one stream, at +1.4%% "
                       "general-text perplexity on the embedded model (docs/deploy.md: Decode speed)")
    serve.add_argument("--threads", type=int, metavar="N",
                       help="CPU threads for torch, or for llama.cpp's server with --engine llama.cpp (default: one per "
                       "core, or the server's own default; on a busy machine 1 can be much faster)")
    serve.add_argument("--registry", type=Path, metavar="PATH", help="the model registry that registry:ALIAS is "
                       "looked up in (default: $TUNEFORGE_REGISTRY, else ./tuneforge-registry.db)")
    serve.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS_ROOT, metavar="DIR",
                       help=f"where the dashboard at / looks for run directories (default ./{DEFAULT_RUNS_ROOT})")
    serve.add_argument("--engine", choices=("builtin", "llama.cpp", "vllm"), default="builtin",
                       help="what generates behind the same API: builtin (default; batching over transformers), "
                       "llama.cpp (llama.cpp's server as a child process, on a GGUF export cached on first use; "
                       "see --llama-server; extra 'tuneforge[llamacpp]'), vllm (a vLLM OpenAI server as a child process, on a merged export; "
                       "vLLM in its own virtualenv, see --vllm-python). See docs/deploy.md")
    serve.add_argument("--quant", default="q8_0", metavar="TYPE",
                       help="--engine llama.cpp: the GGUF export's weights (f32, f16, bf16, q8_0; default q8_0)")
    serve.add_argument("--llama-server", metavar="PATH", help="--engine llama.cpp: llama.cpp's llama-server binary "
                       "(default: $TUNEFORGE_LLAMA_SERVER, else llama-server on PATH, else llama-cpp-python's own server, "
                       "one request at a time; 'python' picks that one)")
    serve.add_argument("--vllm-python", metavar="PATH", help="--engine vllm: the python of the virtualenv vLLM is "
                       "installed in (default: $TUNEFORGE_VLLM_PYTHON, else this python)")
    serve.add_argument("--registry-poll", type=float, metavar="SECONDS",
                       help="how often to check which version registry:ALIAS names (default 2)")


def options_from(args: argparse.Namespace) -> ServeOptions:
    try:
        return ServeOptions(
            host=args.host, port=args.port, api_keys=api_keys_from(args.api_keys),
            max_prompt_tokens=args.max_prompt_tokens, max_new_tokens=args.max_new_tokens,
            max_concurrent=args.max_concurrent, request_timeout_s=args.request_timeout,
            max_batch_size=args.max_batch_size, batching=args.batching, dtype=args.dtype,
            log_db=None if args.no_log else Path(args.log_db), log_retention_days=args.log_retention_days,
            log_max_rows=args.log_max_rows, log_redact_pii=args.log_redact_pii,
            runs_dir=args.runs_dir, registry_db=args.registry,
            engine=args.engine, engine_quant=args.quant, threads=args.threads, vllm_python=args.vllm_python,
            llama_server=args.llama_server,
        )
    except ValueError as exc:
        raise ConfigError(f"tuneforge serve: {exc}") from exc


def run_serve(args: argparse.Namespace, console: Console) -> int:
    from tuneforge.serve.app import create_app

    options = options_from(args)
    if options.engine != "builtin" and not args.batching:
        raise ConfigError("--no-batching applies to the built-in engine only")
    served, target, options = load_for_serving(args, options, console)
    app = create_app(served, options, target)
    announce(served, options, target, console)
    return run_app(app, options)


def load_for_serving(args: argparse.Namespace, options: ServeOptions, console: Console):
    """(served: a language model or a classifier, its registry target or None, the options with the built-in
    engine's thread count resolved) as the flags say. With the built-in engine the main thread loads serially
    and the engine's thread takes the threads (serve/threads.py)."""
    from tuneforge.serve.served import load_served, parse_adapter_flag

    adapters = [parse_adapter_flag(flag) for flag in args.adapters]
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {args.threads}")
    from tuneforge.models.classifier import is_classifier
    from tuneforge.serve.predict_images import is_image_classifier
    from tuneforge.serve.live import load_target, show_swaps_in_terminal, target_from

    target = target_from(args.model, args.registry, args.served_model_name, args.registry_poll)
    classifier = target is None and (is_classifier(args.model) or is_image_classifier(args.model))
    if classifier and adapters:
        raise ConfigError(f"{args.model} is a classifier; --adapter serves LoRA adapters of chat models only")
    console.print(f"loading {args.model} ...")
    from tuneforge.serve import threads

    if options.engine == "builtin":
        options = dataclasses.replace(options, threads=threads.for_the_engine(args.threads))
    try:
        if classifier:
            from tuneforge.serve.classifier import load_served_classifier

            served = load_served_classifier(args.model, args.served_model_name)
        else:
            served = load_target(target, adapters) if target else load_served(args.model, adapters,
                                                                              args.served_model_name)
    except BaseException:
        threads.take(options.threads)  # a start that failed leaves this thread's threads as they were asked
        raise
    for warning in served.warnings:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    if target and target.follows:
        show_swaps_in_terminal()
    return served, target, options


def announce(served, options: ServeOptions, target, console: Console) -> None:
    console.print(describe(served, options), highlight=False)
    if target:
        console.print(f"registry: {target.name} is {served.version} in {target.registry}"
                      + (f"; following it (checked every {target.poll_s:g} s)" if target.follows else ""),
                      highlight=False)


def run_app(app, options: ServeOptions) -> int:
    import uvicorn

    from tuneforge.serve.shutdown import DrainingServer

    config = uvicorn.Config(app, host=options.host, port=options.port, log_level="info",
                            timeout_graceful_shutdown=int(options.request_timeout_s) + 5)
    DrainingServer(config, app.state.server, drain_s=options.request_timeout_s + 5).run()
    return 0


def describe(served, options: ServeOptions) -> str:
    from tuneforge.serve.classifier import ServedClassifier  # here, not at the top: it imports torch

    url = f"http://{options.host}:{options.port}"
    limits = f"{options.max_concurrent} requests in flight, {options.request_timeout_s:g} s timeout"
    if isinstance(served, ServedClassifier):
        body = '{"images": ["<base64>", ...]}' if served.images else '{"input": ["text", ...]}'
        lines = [served.describe(), f"POST {url}/v1/classify with {body}    models: {url}/v1/models"
                 f"    metrics: {url}/metrics"]
        items = "images" if served.images else "texts"
        batching = (f"batching: requests waiting together share forward passes of up to {options.max_batch_size} "
                    f"{items}; limits: {MAX_TEXTS} {items} per request, {limits}")
    else:
        lines = [f"models: {', '.join(served.names)} (engine: {options.engine})",
                 f"OpenAI base URL: {url}/v1    dashboard: {url}/    metrics: {url}/metrics"]
        batching = (f"batching: up to {options.max_batch_size} sequences per step" if options.batching
                    else "batching: off (one request at a time)")
        if options.engine != "builtin":
            batching = f"batching: by the {options.engine} engine"
        batching += (f"; limits: prompt {options.max_prompt_tokens} tokens, {options.max_new_tokens} new tokens, "
                     + limits)
    if options.api_keys:
        lines.append(f"API keys: {len(options.api_keys)} configured")
    else:
        lines.append("API keys: none (anyone who can reach the port can use it; see --api-key)")
    lines.append(batching)
    if options.log_db:
        lines.append(f"request log: {options.log_db.resolve()} (kept {options.log_retention_days:g} days, at most "
                     f"{options.log_max_rows:,} requests{'; PII redacted' if options.log_redact_pii else ''}; "
                     "feedback: POST /v1/feedback; --no-log turns it off)")
    else:
        lines.append("request log: off (--no-log); POST /v1/feedback is refused")
    return "\n".join(lines)
