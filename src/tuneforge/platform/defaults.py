"""The platform's default limits, in a module light enough for `tuneforge --help` (no torch, no FastAPI)."""

MAX_UPLOAD_BYTES = 512 << 20  # a larger upload gets 413
MAX_CONCURRENT_JOBS = 1  # jobs training at once; the rest wait in the queue
GRACE_S = 30.0  # cancel, pause and shutdown: SIGTERM, then SIGKILL after this
LOADED_MODELS = 2  # fine-tuned models kept in memory at once; the least recently used goes
