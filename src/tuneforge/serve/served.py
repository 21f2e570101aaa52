"""What the server serves: one base model, the run's own adapter, extra LoRA adapters, each under a name.

As in vLLM, the base and each adapter are separate entries of /v1/models, and a request picks one
with its `model` field. A LoRA run (`tuneforge serve runs/quickstart`) serves its adapter under
the reference as given (or --served-model-name) and the base under the base model's reference.
Adapters are loaded into one peft model under internal names (peft names must be identifiers),
so a single forward pass can mix them (engine.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tuneforge.errors import ModelError
from tuneforge.models.load import ModelInfo, load_for_inference, saved_model_dir
from tuneforge.serve.engine import BASE_ADAPTER
from tuneforge.serve.protocol import ModelCard, now


@dataclass(frozen=True)
class ServedName:
    id: str
    adapter: str | None  # the peft adapter name, BASE_ADAPTER, or None when the model has no adapters
    root: str
    parent: str | None = None


@dataclass
class Served:
    model: object
    tokenizer: object
    names: dict[str, ServedName]
    default: str  # the model a request without `model` gets
    context_length: int | None
    created: int = field(default_factory=now)
    warnings: list[str] = field(default_factory=list)
    version: str | None = None  # the registry version being served (serving an alias), else None

    def cards(self) -> list[ModelCard]:
        return [ModelCard(id=n.id, created=self.created, root=n.root, parent=n.parent, version=self.version)
                for n in self.names.values()]


def parse_adapter_flag(text: str) -> tuple[str, str]:
    """NAME=PATH from --adapter."""
    name, sep, path = text.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise ModelError(f"--adapter {text!r}: expected NAME=PATH, e.g. support=runs/support")
    return name.strip(), path.strip()


def adapter_dir(path: str) -> Path:
    """The directory holding a LoRA adapter, given a run dir, a checkpoint, or the adapter dir itself."""
    given = Path(path).expanduser()
    if not given.is_dir():
        raise ModelError(f"adapter {path}: no such directory")
    saved = saved_model_dir(given) or given
    if not (saved / "adapter_config.json").is_file():
        raise ModelError(f"adapter {path}: no adapter_config.json (a full fine-tune is served on its own, not as an adapter)")
    return saved


def load_served(reference: str, adapters: list[tuple[str, str]] = (), name: str | None = None) -> Served:
    """Load the model (and its adapters) once; every request shares these weights."""
    model, tokenizer = load_for_inference(reference)
    main_id = name or reference.rstrip("/") or reference
    path = Path(reference).expanduser()
    saved = saved_model_dir(path) if path.is_dir() else None
    info = ModelInfo.read(saved) if saved else None
    names: dict[str, ServedName] = {}
    base_id = main_id
    if info and info.method == "lora":
        base_id = info.base_model
        if main_id == base_id:
            raise ModelError(f"--served-model-name {main_id}: that is the base model's name; pick another")
        names[base_id] = ServedName(base_id, BASE_ADAPTER, info.base_model)
        names[main_id] = ServedName(main_id, model.active_adapter, str(saved), parent=base_id)
    else:
        names[main_id] = ServedName(main_id, None, str(saved or reference))
    warnings = []
    for index, (adapter_name, adapter_path) in enumerate(adapters, start=1):
        if adapter_name in names:
            raise ModelError(f"--adapter {adapter_name}: that name is already served ({', '.join(names)})")
        directory = adapter_dir(adapter_path)
        warnings += base_mismatch(directory, adapter_name, base_reference(info, reference))
        internal = f"adapter_{index}"
        model = attach_adapter(model, directory, internal)
        names[adapter_name] = ServedName(adapter_name, internal, str(directory), parent=base_id)
    if hasattr(model, "peft_config") and names[base_id].adapter is None:
        names[base_id] = ServedName(base_id, BASE_ADAPTER, names[base_id].root)
    model.eval()
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return Served(model, tokenizer, names, main_id, context, warnings=warnings)


def base_reference(info: ModelInfo | None, reference: str) -> str:
    return info.base_model if info and info.method == "lora" else reference


def attach_adapter(model, directory: Path, internal: str):
    try:
        if hasattr(model, "peft_config"):
            model.load_adapter(str(directory), adapter_name=internal)
            return model
        from peft import PeftModel

        return PeftModel.from_pretrained(model, str(directory), adapter_name=internal)
    except (ValueError, RuntimeError, OSError, KeyError) as exc:
        raise ModelError(f"adapter {directory}: cannot load onto the served model: {exc}") from exc


def base_mismatch(directory: Path, name: str, base: str) -> list[str]:
    """A warning when an adapter says it was trained on another base model (it may still load, and be wrong)."""
    info_file = directory / "tuneforge.json"
    if info_file.is_file():
        trained_on = json.loads(info_file.read_text()).get("base_model")
        if trained_on and trained_on != base:
            return [f"adapter {name} was trained on {trained_on}, served on {base}"]
    return []
