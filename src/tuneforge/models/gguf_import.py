"""Import a GGUF file once into a safetensors directory.

transformers can load GGUF directly, but it dequantizes and converts the tokenizer on every
load (15-35 s on a 2-core CPU); the imported directory loads in under a second and is what
every later step (training, export, serving) reads.  Measured: `save_pretrained` refuses a
GGUF-loaded model until its `hf_quantizer` and `quantization_config` are cleared.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from tuneforge.errors import ModelError

SOURCE_FILE = "tuneforge_source.json"


def import_gguf(gguf: Path, dest: Path) -> Path:
    """Dequantize `gguf` to fp32 safetensors in `dest`; atomic: `dest` appears complete or not at all."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not gguf.is_file():
        raise ModelError(f"{gguf}: GGUF file not found")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.importing-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except Exception as exc:  # any failure to parse the user's file is a user-facing error
        raise ModelError(f"{gguf}: cannot import this GGUF file (unsupported architecture or corrupt file): {exc}") from exc
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if tokenizer.eos_token_id is not None:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / SOURCE_FILE).write_text(
            json.dumps({"gguf": str(gguf), "size_bytes": gguf.stat().st_size, "imported_at": time.time()}, indent=2)
        )
        if dest.exists():  # imported concurrently by another process: keep theirs
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
