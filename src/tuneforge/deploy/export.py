"""`tuneforge export`: a run's model as a merged full model or a PEFT adapter, written only if it passes the parity gate.

The order matters: the run's model answers the golden prompts first (the reference), then the
export is written into a temporary directory beside DIR, loaded back from those files the way a
user or a server would load it (plain `AutoModelForCausalLM`, or `PeftModel` on the base its
adapter_config names), and asked the same prompts.  Only when the two agree (deploy/parity.py)
is the temporary directory renamed to DIR; otherwise DIR is left as it was and the parity report
goes into the run directory.  One model is in memory at a time: a LoRA model is merged in place
after its reference answers, and freed before the export is loaded back.

What the adapter's `base_model_name_or_path` says: the hub id when the base is a hub model, else
the local directory tuneforge loaded the base from (for `embedded:NAME`, the imported cache in
TUNEFORGE_HOME).  An adapter only fits the exact weights it was trained on, and the embedded
model's weights are a dequantized GGUF, not the hub's original checkpoint, so naming the hub
model would load wrong weights silently; the model card says where the base came from.
"""

from __future__ import annotations

import copy
import gc
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from rich.console import Console

from tuneforge.config import RunConfig, load_config
from tuneforge.deploy import model_card, parity
from tuneforge.errors import ConfigError, DataError, ModelError, RunDirError
from tuneforge.models import embedded
from tuneforge.models.generate import end_of_turn_ids
from tuneforge.models.load import ModelInfo, load_causal_lm, load_for_inference, load_tokenizer, saved_model_dir
from tuneforge.models.resolve import resolve
from tuneforge.files import fsync_tree
from tuneforge.train.checkpoint import umask_modes
from tuneforge.train.run_dir import check_output_dir, nearest_existing

FAILED_REPORT = "parity_failed.json"  # written into the run directory when the gate fails


@dataclass(frozen=True)
class ExportRequest:
    run: Path  # a run directory, a checkpoint, or a directory holding a saved fine-tune
    to: Path
    mode: Literal["merge", "adapter"]
    overwrite: bool = False
    prompts: Path | None = None  # golden prompts; default: the run's validation data
    limit: int = 8
    max_new_tokens: int = 128
    dtype: str = "auto"  # of the merged weights; auto: as the weights are stored (base model or full fine-tune)
    atol: float | None = None  # logit tolerance; default parity.ATOL[dtype]


@dataclass
class ExportResult:
    report: parity.ParityReport
    directory: Path | None  # the export; None when the parity check failed and nothing was written
    report_path: Path


def export(request: ExportRequest, console: Console | None = None,
           before_check: Callable[[Path], None] | None = None) -> ExportResult:
    """Export `request.run` into `request.to` if it passes the parity gate.  `before_check(tmp)` runs on
    the written files before they are checked (tests use it to corrupt a weight)."""
    console = console or Console(stderr=True)
    source = saved_model_dir(request.run) if request.run.is_dir() else None
    if source is None:
        raise ModelError(f"{request.run}: no fine-tuned model here (expected a run directory with final/, "
                         "a checkpoint directory, or a directory holding tuneforge.json)")
    info = ModelInfo.read(source)
    if request.mode == "adapter" and info.method != "lora":
        raise ConfigError(f"{source}: a {info.method} fine-tune (tuneforge.json method: {info.method}) has no adapter "
                          "to export; use --merge, which writes its full weights")
    target = checked_target(request.to, source.resolve(), request.overwrite)
    with parity.exact_float32():
        return checked_export(request, source, info, target, console, before_check)


def checked_export(request: ExportRequest, source: Path, info: ModelInfo, target: Path, console: Console,
                   before_check: Callable[[Path], None] | None) -> ExportResult:
    """The reference answers, the written export, its check; DIR is replaced only when the check passes."""
    dtype = export_dtype(request, source, info)
    atol = request.atol if request.atol is not None else parity.ATOL[dtype]
    run_dir = run_root(source)
    config = run_config(run_dir, console)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    console.print(f"loading {source} ({info.method}, base {info.base_model}) in float32 on {device.type}")
    model, tokenizer = load_for_inference(str(source), device, "float32")
    prompts, prompts_source = parity.golden_prompts(config, tokenizer, request.prompts, request.limit)
    if not prompts:
        raise DataError(f"no golden prompts in {prompts_source}; pass --prompts FILE")
    generation = generation_config(model.generation_config, tokenizer)
    console.print(f"reference: the run's model answers {len(prompts)} golden prompts from {prompts_source}")
    reference = parity.answer(model, prompts, generation, request.max_new_tokens)

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        base_path = adapter_base(info.base_model)
        console.print(f"writing the {'adapter' if request.mode == 'adapter' else f'merged model ({dtype})'}")
        write_export(request.mode, model, tokenizer, generation, info, base_path, dtype, tmp)
        del model
        gc.collect()
        if before_check:
            before_check(tmp)
        console.print("checking the written files: loading them back and answering the same prompts")
        exported_model, exported_tokenizer, exported_generation = load_export(tmp, request.mode, device)
        exported_prompts = parity.retokenized(prompts, exported_tokenizer)
        exported = parity.answer(exported_model, exported_prompts, exported_generation, request.max_new_tokens, reference)
        del exported_model
        report = parity.check(
            prompts, exported_prompts, tokenizer, reference, exported, mode=request.mode, dtype=dtype, atol=atol,
            max_new_tokens=request.max_new_tokens, prompts_source=prompts_source,
            end_of_turn_ids=parity.eos_ids(generation),
        )
        if not report.passed:
            failed = (run_dir or source) / FAILED_REPORT
            report.write(failed)
            return ExportResult(report, None, failed)
        report.write(tmp / "parity.json")
        description = (embedded.lookup(info.base_model.removeprefix(embedded.PREFIX)).description
                       if info.base_model.startswith(embedded.PREFIX) else None)
        model_card.write(tmp, model_card.CardFacts(request.mode, source, run_dir, info.base_model, base_path,
                                                   description, info.method, report))
        install(tmp, target)
        return ExportResult(report, target, target / "parity.json")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def checked_target(to: Path, source: Path, overwrite: bool) -> Path:
    """The export directory, refused before any work if it would clobber something."""
    target = to.expanduser().resolve()
    if target == source or target in source.parents:
        raise RunDirError(f"--to {to}: that directory holds the model being exported; choose another directory")
    writable_parent(target, to)
    if target.exists() and not target.is_dir():
        raise RunDirError(f"--to {to}: a file is in the way; choose a directory")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise RunDirError(f"--to {to}: the directory is not empty; pass --overwrite to replace it, "
                          "or choose a new directory")
    return target


def writable_parent(target: Path, to: Path) -> None:
    """RunDirError, before any model loads, unless the export can be written beside `target` and renamed into it."""
    check_output_dir(target, label="--to")
    try:  # the files are written into a sibling directory first: make (and remove) one there now
        os.rmdir(tempfile.mkdtemp(prefix=f".{target.name}.probe-", dir=nearest_existing(target.parent)))
    except OSError as exc:
        raise RunDirError(f"--to {to}: cannot write there ({exc.strerror or exc})") from exc


def run_root(source: Path) -> Path | None:
    """The run directory around a saved model (RUN/final, RUN/checkpoints/step-N/model): where config.yaml is."""
    for directory in [source, *list(source.parents)[:3]]:
        if (directory / "config.yaml").is_file():
            return directory
    return None


def run_config(run_dir: Path | None, console: Console) -> RunConfig | None:
    """The run's config, for its validation data; None (with a warning) when it no longer loads, e.g.
    because its data files were moved: the export needs no training data, only golden prompts."""
    if run_dir is None:
        return None
    try:
        return load_config(run_dir / "config.yaml")
    except ConfigError as exc:
        console.print(f"[yellow]warning:[/] {exc}\nso the golden prompts cannot come from the run's data: "
                      "using the shipped general questions (or pass --prompts)", highlight=False)
        return None


def stored_dtype(model_dir: Path) -> str:
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return "float32"
    name = config.get("dtype") or config.get("torch_dtype")
    return name if name in parity.ATOL else "float32"


def export_dtype(request: ExportRequest, source: Path, info: ModelInfo) -> str:
    """The merged weights' dtype: as asked, or as the weights are stored (the full fine-tune's, the base's)."""
    if request.mode == "adapter":
        if request.dtype not in ("auto", "float32"):
            raise ConfigError(f"--dtype {request.dtype} applies to --merge; an adapter is exported as trained (float32)")
        return "float32"
    if request.dtype != "auto":
        if request.dtype not in parity.ATOL:
            raise ConfigError(f"--dtype {request.dtype}: expected auto, {', '.join(parity.ATOL)}")
        return request.dtype
    return stored_dtype(source if info.method != "lora" else resolve(info.base_model))


def adapter_base(reference: str) -> str:
    """The adapter's base_model_name_or_path: a hub id as given, else the local directory the base loads from
    (for a full fine-tune, whose base need not be at hand any more, the reference itself when it is not)."""
    is_hub_id = not reference.startswith(embedded.PREFIX) and not Path(reference).expanduser().exists()
    if is_hub_id:
        return reference
    try:
        return str(resolve(reference))
    except ModelError:
        return reference


def generation_config(configured, tokenizer):
    """The model's generation config with every end-of-turn id as eos_token_id, so plain `generate`
    and vLLM stop where tuneforge stops."""
    config = copy.deepcopy(configured)
    stops = end_of_turn_ids(configured, tokenizer)
    config.eos_token_id = stops[0] if len(stops) == 1 else stops
    if config.pad_token_id is None:
        config.pad_token_id = tokenizer.pad_token_id
    return config


def write_export(mode: str, model, tokenizer, generation, info: ModelInfo, base_path: str, dtype: str,
                 directory: Path) -> None:
    if mode == "adapter":
        model.save_pretrained(directory)
        config_path = directory / "adapter_config.json"
        adapter_config = json.loads(config_path.read_text())
        adapter_config["base_model_name_or_path"] = base_path
        config_path.write_text(json.dumps(adapter_config, indent=2) + "\n")
        generation.save_pretrained(directory)
        ModelInfo(info.base_model, "lora").write(directory)  # so tuneforge chat/generate load the export too
    else:
        merged = model.merge_and_unload(safe_merge=True) if info.method == "lora" else model
        merged = merged.to(getattr(torch, dtype))
        merged.generation_config = generation
        merged.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    umask_modes(directory)  # safetensors leaves its files 0600: a server under another user could not read them


def load_export(directory: Path, mode: str, device: torch.device):
    """(model, tokenizer, generation config) from the written files, in float32, as a user would load them."""
    from transformers import GenerationConfig

    if mode == "adapter":
        from peft import PeftModel

        base_path = json.loads((directory / "adapter_config.json").read_text())["base_model_name_or_path"]
        model = PeftModel.from_pretrained(load_causal_lm(resolve(base_path), torch.float32), directory)
    else:
        model = load_causal_lm(directory, torch.float32)
    return model.to(device).eval(), load_tokenizer(directory), GenerationConfig.from_pretrained(directory)


def install(tmp: Path, target: Path) -> None:
    """Rename the finished export into place; an existing directory is swapped out, then removed."""
    fsync_tree(tmp)
    if not target.exists():
        os.replace(tmp, target)
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)
