"""QLoRA's 4-bit base: whether this machine can load one, and the bitsandbytes settings it loads with.

bitsandbytes' 4-bit kernels are CUDA kernels, so a quantized run is refused when the config is
read on a machine without CUDA or without the package, before any data or model work.
"""

from __future__ import annotations

import importlib.util


def quantization_problem() -> str | None:
    """Why a 4-bit base cannot load here, or None when it can."""
    import torch

    if not torch.cuda.is_available():
        return ("needs an NVIDIA GPU with CUDA (bitsandbytes' 4-bit kernels), and this machine has none; "
                "drop model.quantize to train LoRA on the full-precision base, or use "
                "train.gradient_checkpointing and a smaller batch to save memory")
    if importlib.util.find_spec("bitsandbytes") is None:
        return "needs the bitsandbytes package: pip install 'tuneforge[qlora]'"
    return None


def four_bit_config(compute_dtype):
    """NF4 weights with double quantization, computing in `compute_dtype`: the QLoRA paper's recipe."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )
