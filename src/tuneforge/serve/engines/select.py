"""Which engine generates (`tuneforge serve --engine builtin|llama.cpp|vllm`), and the files a fast engine runs on.

The built-in engine runs on the loaded transformers model itself. llama.cpp and vLLM run on an
export of it, written once into the cache (TUNEFORGE_HOME/engines/) under a key made of the
served model directory's files (names, sizes, modification times) and the export's settings, so a
restart or a registry swap back to a version already served reuses the file, and a retrained run
gets a new one. Both export the model as served: a LoRA run is merged into its base first. They
serve that one model under its served name (the base and extra --adapter entries of the built-in
engine are not offered: an adapter would need its own export).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from tuneforge import paths
from tuneforge.errors import ConfigError
from tuneforge.models.packed import for_decoding
from tuneforge.serve.engine import BASE_ADAPTER, Engine
from tuneforge.serve.engines.api import ENGINES, GenerationEngine
from tuneforge.serve.options import ServeOptions
from tuneforge.serve.served import Served

EXPORT_FORMAT = 1  # bump when the written files change, so old cache entries are not reused


def build_engine(served: Served, options: ServeOptions) -> GenerationEngine:
    """A new (not yet started) engine for `served`, as `options.engine` says."""
    if options.engine == "builtin":
        served.model = for_decoding(served.model, options.dtype)  # each swapped-in version too
        return Engine(served.model, served.tokenizer, options.max_batch_size, options.batching, options.threads)
    if options.engine not in ENGINES:
        raise ConfigError(f"--engine {options.engine}: expected one of {', '.join(ENGINES)}")
    single_model(served, options.engine)
    if options.engine == "llama.cpp":
        from tuneforge.serve.engines.llamacpp import LlamaCppEngine

        return LlamaCppEngine.for_served(served, options)
    from tuneforge.serve.engines.vllm import VllmEngine

    return VllmEngine.for_served(served, options)


def single_model(served: Served, engine: str) -> None:
    """Serve only the main model under its name (in place): a fast engine runs one merged export."""
    main = served.names[served.default]
    extra = [n.id for n in served.names.values() if n.adapter not in (None, BASE_ADAPTER) and n.id != main.id]
    if extra:
        raise ConfigError(f"--engine {engine} serves one model, the merged export of {main.id}; --adapter "
                          f"({', '.join(extra)}) is served by the built-in engine only")
    served.names = {main.id: type(main)(main.id, None, main.root)}


def source_key(served: Served, *settings: str) -> str:
    """A digest of the served model's files and the export settings (the cache entry's name)."""
    root = Path(served.names[served.default].root)
    digest = hashlib.sha256(json.dumps([str(root.resolve()), EXPORT_FORMAT, *settings]).encode())
    if root.is_dir():
        for path in sorted(root.rglob("*")):
            if path.is_file():
                stat = path.stat()
                digest.update(f"{path.relative_to(root)}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def cache_dir(kind: str, key: str) -> Path:
    return paths.home() / "engines" / kind / key


def merged_model(served: Served):
    """The served model with its LoRA merged in (in place: the engine that asked keeps no use for the adapter)."""
    model = served.model
    if hasattr(model, "peft_config"):
        model = model.merge_and_unload(safe_merge=True)
    return model.eval()


def fill_cache(directory: Path, write) -> Path:
    """Run `write(tmp)` into a temporary directory and rename it to `directory`; an existing entry is reused."""
    if directory.is_dir():
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write(tmp)
        os.replace(tmp, directory)
    except OSError:
        if not directory.is_dir():  # not another process that finished first
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory
