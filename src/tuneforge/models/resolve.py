"""Turn a model reference into a local HF directory: the one place that knows the kinds of reference.

A reference is `embedded:NAME`, a `.gguf` file, a local directory, or a hub id.  GGUF
sources are imported once into the cache; hub ids are read from the HF cache when there,
and otherwise downloaded, failing at once with a clear message when offline.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from urllib.parse import urlparse

from tuneforge import paths
from tuneforge.errors import ModelError
from tuneforge.models import embedded
from tuneforge.models.gguf_import import import_gguf

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")  # org/name, or a legacy bare name like gpt2


def resolve(reference: str) -> Path:
    if reference.startswith(embedded.PREFIX):
        model = embedded.lookup(reference.removeprefix(embedded.PREFIX))
        if model.model_dir:
            return embedded.model_dir_path(model)
        cached = paths.models_cache() / model.name
        if not is_model_dir(cached):
            import_gguf(embedded.gguf_path(model), cached)
        return cached
    path = Path(reference).expanduser()
    if path.suffix == ".gguf":
        cached = paths.models_cache() / path.stem.lower()
        if not is_model_dir(cached):
            import_gguf(path, cached)
        return cached
    if path.is_dir():
        if not is_model_dir(path):
            raise ModelError(f"{path}: not a model directory (no config.json)")
        return path.resolve()
    if path.exists() or not HUB_ID.match(reference):
        raise ModelError(
            f"model '{reference}' not found: expected a model directory, a .gguf file, a hub id (org/name), "
            f"or one of: {', '.join(embedded.PREFIX + n for n in embedded.EMBEDDED_MODELS)}"
        )
    return from_hub(reference)


def is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


def from_hub(repo_id: str) -> Path:
    from huggingface_hub import constants, snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not in the local HF cache: download below
        pass
    if constants.HF_HUB_OFFLINE or not hub_reachable(constants.ENDPOINT):
        raise ModelError(
            f"model '{repo_id}': no local directory of that name, not in the local Hugging Face cache, and the "
            f"hub cannot be reached (offline). Download it on a connected machine, or name a local directory, "
            f"a .gguf file or embedded:NAME."
        )
    try:
        path = snapshot_download(
            repo_id,
            allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.jinja"],
        )
    except Exception as exc:
        raise ModelError(f"model '{repo_id}': download failed: {exc}") from exc
    return Path(path)


def hub_reachable(endpoint: str, timeout_s: float = 3.0) -> bool:
    """A quick TCP check, so an offline machine fails in seconds instead of after HTTP retries."""
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def cached_models() -> list[Path]:
    root = paths.models_cache()
    return sorted(p for p in root.iterdir() if is_model_dir(p)) if root.is_dir() else []

