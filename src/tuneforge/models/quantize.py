"""QLoRA's 4-bit base: the bitsandbytes settings it loads with.

bitsandbytes' 4-bit kernels are CUDA kernels, so a quantized run is refused when the config is
read on a machine without CUDA or without the package, before any data or model work
(config/rules.py, quantization_problem).
"""

from __future__ import annotations


def four_bit_config(compute_dtype):
    """NF4 weights with double quantization, computing in `compute_dtype`: the QLoRA paper's recipe."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )
