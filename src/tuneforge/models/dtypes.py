"""The dtypes a model can decode in, named without importing torch (for `tuneforge --help`)."""

DECODE_DTYPES = ("float32", "bfloat16", "int8")  # models/packed.py: packed bf16 linears, int8 weights
