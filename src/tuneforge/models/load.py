"""Load a model and tokenizer for training or inference, from any reference or a run directory.

A run's `final/` and each checkpoint's `model/` hold either a PEFT adapter or full weights,
plus the tokenizer and a `tuneforge.json` naming the base model, so chat, generate and
(later) export and serve can all take a run directory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from tuneforge.errors import ModelError
from tuneforge.models.resolve import resolve
# Where a run keeps its saved fine-tune is the on-disk layout (paths.py); imported here for the loaders below and their callers.
from tuneforge.paths import MODEL_INFO, saved_fine_tune, saved_model_dir


@dataclass(frozen=True)
class ModelInfo:
    """What a saved fine-tune needs to be loaded again: its base model and how it was trained."""

    base_model: str
    method: str  # "lora" (dir holds an adapter) or "full" (dir holds full weights)

    def write(self, directory: Path) -> None:
        (directory / MODEL_INFO).write_text(json.dumps({"base_model": self.base_model, "method": self.method}, indent=2))

    @staticmethod
    def read(directory: Path) -> ModelInfo:
        data = json.loads((directory / MODEL_INFO).read_text())
        return ModelInfo(base_model=data["base_model"], method=data["method"])


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 matmuls run in hardware here: a CUDA GPU with bf16, or a CPU with AVX512-BF16 or AMX
    (on this project's 2-core EPYC 4.3x the fp32 rate, bench/RESULTS.md).  Elsewhere a CPU converts
    bf16 in software and runs it slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """The weights' dtype for inference: auto is bf16 on CUDA, fp32 on CPU (where answers then match
    the fp32 reference tuneforge checks exports and served models against)."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" and native_bf16(device) else torch.float32
    return getattr(torch, name)


def training_dtype(name: str, device: torch.device) -> torch.dtype:
    """The frozen weights' dtype for training: auto is bf16 wherever the hardware runs it natively, CPUs
    included, else fp32."""
    if name == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float32
    return getattr(torch, name)


def trains_under_autocast(name: str, device: torch.device) -> bool:
    """Whether training runs its matmuls under bf16 autocast (over fp32 master weights and adapters):
    always on CUDA, and on a CPU when the weights' dtype is bf16."""
    return device.type == "cuda" or training_dtype(name, device) == torch.bfloat16


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def quiet_transformers() -> None:
    """Drop per-load progress bars and advisory warnings that bury tuneforge's own output."""
    import warnings

    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def load_causal_lm(path: Path, dtype: torch.dtype, quantization=None, device: torch.device | None = None):
    """`quantization` (a transformers BitsAndBytesConfig) loads the weights quantized, straight onto `device`."""
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    placement = {"quantization_config": quantization, "device_map": {"": device}} if quantization else {}
    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **placement)
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: cannot load model: {exc}") from exc


def refuse_classifier(reference: str) -> None:
    """A classifier's run (text or images) answers labels, not text: what generates or scores text names the
    commands that take it instead, before any data or weights are read."""
    path = Path(reference).expanduser()
    saved = saved_model_dir(path) if path.is_dir() else None
    task = json.loads((saved / MODEL_INFO).read_text()).get("task") if saved else None
    if task in ("classify", "image_classify"):
        what = "FILE" if task == "classify" else "IMAGE_OR_FOLDER"
        raise ModelError(f"{reference} is a classifier (task: {task}): use `tuneforge predict {reference} {what}` "
                         f"(a labelled file or folder is also scored: accuracy, macro-F1), or `tuneforge serve "
                         f"{reference}` and POST /v1/classify")


def load_for_inference(reference: str, device: torch.device | None = None, dtype: str = "auto"):
    """(model, tokenizer) in eval mode, from a run dir, checkpoint, or any model reference."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch_dtype = pick_dtype(dtype, device)
    path = Path(reference).expanduser()
    saved = saved_model_dir(path) if path.is_dir() else None
    refuse_classifier(reference)
    if saved is None:
        model_dir = resolve(reference)
        model = load_causal_lm(model_dir, torch_dtype)
        tokenizer = load_tokenizer(model_dir)
    else:
        info = ModelInfo.read(saved)
        tokenizer = load_tokenizer(saved)
        if info.method == "lora":
            from peft import PeftModel

            base = load_causal_lm(resolve(info.base_model), torch_dtype)
            model = PeftModel.from_pretrained(base, saved)
        else:
            model = load_causal_lm(saved, torch_dtype)
    return model.to(device).eval(), tokenizer
