"""The server's settings: where it listens, who may call it, and the limits every request meets."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tuneforge.models.dtypes import DECODE_DTYPES
from tuneforge.monitor.requestlog import DEFAULT_LOG_DB, LogSettings

MAX_TEXTS = 256  # per classify request; more get 400 (send them in several requests)

API_KEYS_ENV = "TUNEFORGE_API_KEYS"  # comma-separated; added to any --api-key given


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    api_keys: tuple[str, ...] = ()  # empty: no authentication
    max_prompt_tokens: int = 2048
    max_new_tokens: int = 512  # the most a request may ask for, and what it gets when it names no max_tokens
    max_concurrent: int = 64  # requests in flight (running or waiting); more get 429
    request_timeout_s: float = 300.0  # a request still unanswered after this gets 503 and is cancelled
    max_batch_size: int = 16  # sequences decoded together in one forward pass
    batching: bool = True  # False: one request at a time (the baseline the load benchmark compares with)
    dtype: str = "float32"  # the weights' dtype while decoding: float32 (exact), bfloat16 or int8 (models/packed.py)
    max_body_bytes: int = 1 << 20  # larger request bodies get 413
    # The request log (monitor/requestlog.py). None: nothing is logged; `tuneforge serve` logs to
    # DEFAULT_LOG_DB in the current directory unless --no-log, so only the CLI's default writes a file.
    log_db: Path | None = None
    log_retention_days: float = 30.0
    log_max_rows: int = 1_000_000
    log_redact_pii: bool = False
    # What the dashboard at / reads (dashboard/settings.py): run directories, and the model registry
    # (None: registry/store.py's default, $TUNEFORGE_REGISTRY else ./tuneforge-registry.db).
    runs_dir: Path = Path("runs")
    registry_db: Path | None = None
    # What generates (serve/engines/): the built-in batching engine, or a llama.cpp or vLLM server as a child process.
    engine: str = "builtin"
    engine_quant: str = "q8_0"  # the GGUF quantisation llama.cpp serves
    threads: int | None = None  # CPU threads for the engine (torch or llama.cpp); None: one per core
    vllm_python: str | None = None  # the vLLM virtualenv's interpreter; None: $TUNEFORGE_VLLM_PYTHON
    llama_server: str | None = None  # llama.cpp's llama-server binary, or "python"; None: $TUNEFORGE_LLAMA_SERVER, PATH

    def __post_init__(self) -> None:
        for name in ("max_prompt_tokens", "max_new_tokens", "max_concurrent", "max_batch_size", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.dtype not in DECODE_DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DECODE_DTYPES)}, got {self.dtype!r}")
        if self.engine not in ("builtin", "llama.cpp", "vllm"):
            raise ValueError(f"engine must be builtin, llama.cpp or vllm, got {self.engine!r}")
        if self.request_timeout_s <= 0:
            raise ValueError(f"request_timeout_s must be positive, got {self.request_timeout_s}")
        if self.log_db is not None:
            object.__setattr__(self, "log_db", Path(self.log_db))
        self.log_settings()  # its limits are checked now, even when logging is off

    def log_settings(self) -> LogSettings | None:
        """The request log's settings, or None when the server logs nothing."""
        settings = LogSettings(Path(self.log_db or DEFAULT_LOG_DB), self.log_retention_days, self.log_max_rows,
                               self.log_redact_pii)
        return settings if self.log_db is not None else None


def api_keys_from(flags: list[str], environ: dict[str, str] | None = None) -> tuple[str, ...]:
    """Keys from repeated --api-key flags plus the TUNEFORGE_API_KEYS variable, which keeps them out of `ps`."""
    environ = os.environ if environ is None else environ
    from_env = [key.strip() for key in environ.get(API_KEYS_ENV, "").split(",")]
    keys = [key.strip() for key in flags] + from_env
    return tuple(dict.fromkeys(key for key in keys if key))
