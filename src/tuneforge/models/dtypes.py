"""The dtypes a model can decode in, named without importing torch (for `tuneforge --help`)."""

DECODE_DTYPES = ("float32", "bfloat16")  # models/packed.py packs bf16 linears where the CPU runs them natively
