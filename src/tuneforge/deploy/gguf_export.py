"""`tuneforge export --format gguf`: a run's model as model.gguf + an Ollama Modelfile, written only if it passes the parity gate.

The same gate as the other exports (deploy/export.py, deploy/parity.py): the run's model answers
the golden prompts in float32 first (the reference); a LoRA model is then merged in place, the
GGUF file and Modelfile are written into a temporary directory beside DIR, and the file is read
back by a GGUF reader that knows nothing of tuneforge: transformers' `gguf_file=` loader (its own
tokenizer and config rebuilt from the file's metadata), and llama.cpp through llama-cpp-python
when it is installed. Each reader's greedy replies and logits are compared with the reference's
within the quantisation's tolerance (TOLERANCES, stated in docs/deploy.md); only when every reader
passes is the temporary directory renamed to DIR. A failing export writes nothing into DIR and
leaves its report in the run directory.
"""

from __future__ import annotations

import gc
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console

from tuneforge.deploy import gguf, modelfile, parity
from tuneforge.deploy.export import (
    FAILED_REPORT, ExportResult, checked_target, generation_config, install, run_config, run_root,
)
from tuneforge.errors import DataError, ModelError
from tuneforge.models.load import ModelInfo, load_for_inference, saved_model_dir


@dataclass(frozen=True)
class Tolerance:
    """How far a GGUF reader's answers may be from the run's model's (float32) answers."""

    atol: float  # max |logit difference| over prompt + reference reply, transformers' reader (float32 compute)
    min_identical: float  # fraction of golden prompts whose greedy reply must be identical, token for token
    llama_cpp_atol: float  # the same for llama.cpp, which computes in its own kernels (and Q8_0 activations)
    llama_cpp_min_identical: float = 0.75  # llama.cpp keeps its KV cache in float16: a near tie may flip even in f32


# llama.cpp's max |logit diff| against the float32 transformers model, measured on SmolLM2-135M-Instruct
# (a chat prompt, every position and vocabulary entry): f32 0.050, f16 0.089, bf16 0.33, q8_0 2.55
# (llama.cpp also rounds activations to 8 bits in Q8_0 matmuls; argmax agreed on 97% of positions).
# The quickstart fine-tune (sharper logits) as q8_0 on 4 golden prompts: transformers 2.02 and 3/4 replies
# identical, llama.cpp 5.14 and 2/4 identical (first differences after 11+ tokens): hence q8_0's wider limits.
# The tolerances leave room above those; transformers' reader (weights dequantized, float32 compute)
# differs less. Rounding weights can turn a near tie in a long greedy reply the other way, so
# quantised files need most, not all, replies identical. bench/RESULTS.md, "GGUF export".
TOLERANCES = {
    "f32": Tolerance(atol=1e-3, min_identical=1.0, llama_cpp_atol=0.5),
    "f16": Tolerance(atol=0.25, min_identical=1.0, llama_cpp_atol=0.75),
    "bf16": Tolerance(atol=1.0, min_identical=0.75, llama_cpp_atol=1.5),
    "q8_0": Tolerance(atol=3.0, min_identical=0.75, llama_cpp_atol=8.0, llama_cpp_min_identical=0.5),
}


@dataclass
class GgufParityReport(parity.ParityReport):
    llama_cpp: dict | None = None  # llama.cpp's figures (max |logit diff|, identical replies), when it checked

    def summary(self) -> str:
        text = super().summary()
        if self.llama_cpp:
            figures = self.llama_cpp
            text += (f"; llama.cpp: max |logit diff| {figures['max_abs_logit_diff']:.3g} (tolerance {figures['atol']:g}), "
                     f"greedy replies identical {figures['identical']}/{figures['prompts']}")
        return text


@dataclass(frozen=True)
class GgufRequest:
    run: Path
    to: Path
    quant: str = "q8_0"
    overwrite: bool = False
    prompts: Path | None = None
    limit: int = 8
    max_new_tokens: int = 128
    llama_cpp: bool | None = None  # None: check with llama.cpp when llama-cpp-python is installed


def export_gguf(request: GgufRequest, console: Console | None = None,
                before_check: Callable[[Path], None] | None = None) -> ExportResult:
    """Export `request.run` as DIR/model.gguf (+ Modelfile, README.md, parity.json) if it passes the gate.
    `before_check(tmp)` runs on the written files before they are checked (tests corrupt the file with it)."""
    console = console or Console(stderr=True)
    chosen = gguf.quant(request.quant)
    source = saved_model_dir(request.run) if request.run.is_dir() else None
    if source is None:
        raise ModelError(f"{request.run}: no fine-tuned model here (expected a run directory with final/, "
                         "a checkpoint directory, or a directory holding tuneforge.json)")
    target = checked_target(request.to, source.resolve(), request.overwrite)
    use_llama_cpp = llama_cpp_available() if request.llama_cpp is None else request.llama_cpp
    if use_llama_cpp and not llama_cpp_available():
        raise ModelError("the llama.cpp check needs llama-cpp-python: pip install 'tuneforge[llamacpp]'")
    with parity.exact_float32():
        return checked_gguf(request, source, chosen, target, use_llama_cpp, console, before_check)


def checked_gguf(request: GgufRequest, source: Path, chosen: gguf.Quant, target: Path, use_llama_cpp: bool,
                 console: Console, before_check: Callable[[Path], None] | None) -> ExportResult:
    info = ModelInfo.read(source)
    run_dir = run_root(source)
    config = run_config(run_dir, console)
    console.print(f"loading {source} ({info.method}, base {info.base_model}) in float32")
    model, tokenizer = load_for_inference(str(source), torch.device("cpu"), "float32")
    gguf.family_of(model.config)  # refuse an unsupported model before answering anything
    prompts, prompts_source = parity.golden_prompts(config, tokenizer, request.prompts, request.limit)
    if not prompts:
        raise DataError(f"no golden prompts in {prompts_source}; pass --prompts FILE")
    generation = generation_config(model.generation_config, tokenizer)
    stops = parity.eos_ids(generation)
    console.print(f"reference: the run's model answers {len(prompts)} golden prompts from {prompts_source}")
    reference = parity.answer(model, prompts, generation, request.max_new_tokens)
    if info.method == "lora":
        model = model.merge_and_unload(safe_merge=True)

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        console.print(f"writing {gguf.GGUF_NAME} ({chosen.name}) and an Ollama Modelfile")
        gguf.write_gguf(model, tokenizer, stops, tmp / gguf.GGUF_NAME, chosen, name=source.name)
        template_note = modelfile.write(tmp / modelfile.MODELFILE, tokenizer, stops)
        del model
        gc.collect()
        if before_check:
            before_check(tmp)
        tolerance = TOLERANCES[chosen.name]
        report = check_file(tmp / gguf.GGUF_NAME, prompts, tokenizer, reference, generation, request, chosen, tolerance,
                            prompts_source, use_llama_cpp, console)
        if template_note:
            report.warnings.append(template_note)
        if not report.passed:
            failed = (run_dir or source) / FAILED_REPORT
            report.write(failed)
            return ExportResult(report, None, failed)
        report.write(tmp / "parity.json")
        (tmp / "README.md").write_text(readme(source, info, chosen, report, use_llama_cpp))
        install(tmp, target)
        return ExportResult(report, target, target / "parity.json")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_file(path: Path, prompts, tokenizer, reference: parity.Answers, generation, request: GgufRequest,
               chosen: gguf.Quant, tolerance: Tolerance, prompts_source: str, use_llama_cpp: bool,
               console: Console) -> parity.ParityReport:
    """The parity report of the file as transformers reads it, with llama.cpp's verdict folded in."""
    console.print("checking the written file: transformers' GGUF reader answers the same prompts")
    try:
        exported_model, exported_tokenizer = load_gguf(path)
    except Exception as exc:  # a corrupt or truncated file fails in the reader: the gate's verdict, not a crash
        return failed_report(f"transformers cannot read the written file: {type(exc).__name__}: {exc}", chosen,
                             tolerance, request, prompts_source, generation)
    exported_prompts = parity.retokenized(prompts, exported_tokenizer)
    exported = parity.answer(exported_model, exported_prompts, generation, request.max_new_tokens, reference)
    del exported_model
    gc.collect()
    checks = parity.compare(prompts, exported_prompts, tokenizer, reference, exported)
    reasons, warnings = parity.verdict(checks, tokenizer, reference, exported, tolerance.atol, request.max_new_tokens)
    reasons = relaxed(reasons, checks, tolerance, "transformers")
    figures = None
    if use_llama_cpp:
        from tuneforge.deploy.gguf_llamacpp import llama_cpp_verdict

        console.print("checking the written file: llama.cpp (llama-cpp-python) answers the same prompts")
        more, figures = llama_cpp_verdict(path, prompts, tokenizer, reference, set(parity.eos_ids(generation)),
                                          request.max_new_tokens, tolerance, list(generation.suppress_tokens or ()))
        reasons += more
    else:
        warnings.append("llama-cpp-python is not installed: the file was checked with transformers' GGUF reader only "
                        "(pip install 'tuneforge[llamacpp]' to check it with llama.cpp too)")
    diffs = [c.max_abs_logit_diff for c in checks if c.max_abs_logit_diff is not None]
    return GgufParityReport(not reasons, reasons, warnings, f"gguf {chosen.name}", "float32", tolerance.atol,
                            max(diffs, default=float("nan")), request.max_new_tokens, prompts_source,
                            parity.eos_ids(generation), checks, figures or None)


def relaxed(reasons: list[str], checks: list[parity.PromptCheck], tolerance: Tolerance, reader: str) -> list[str]:
    """parity.verdict's reasons, with "greedy replies differ" replaced by the quantisation's own rule:
    at least `min_identical` of the replies identical."""
    kept = [f"{reader}: {r}" for r in reasons if not r.startswith("greedy replies differ")]
    identical = sum(c.identical for c in checks)
    if identical < tolerance.min_identical * len(checks):
        first = next(c for c in checks if not c.identical)
        kept.append(f"{reader}: greedy replies identical on {identical} of {len(checks)} prompts, fewer than the "
                    f"{tolerance.min_identical:.0%} this quantisation allows; first difference on {first.source} at "
                    f"reply token {first.first_difference}")
    return kept


def failed_report(reason: str, chosen: gguf.Quant, tolerance: Tolerance, request: GgufRequest, prompts_source: str,
                  generation) -> parity.ParityReport:
    return GgufParityReport(False, [reason], [], f"gguf {chosen.name}", "float32", tolerance.atol, float("nan"),
                            request.max_new_tokens, prompts_source, parity.eos_ids(generation), [])


def load_gguf(path: Path):
    """(model, tokenizer) as transformers reads a GGUF file: dequantized to float32, tokenizer from the metadata."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return model.eval(), tokenizer


def llama_cpp_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def readme(source: Path, info: ModelInfo, chosen: gguf.Quant, report: parity.ParityReport, llama_cpp: bool) -> str:
    checked = "transformers' GGUF reader and llama.cpp" if llama_cpp else "transformers' GGUF reader"
    return (f"# {source.name} (GGUF, {chosen.name})\n\n"
            f"Exported by tuneforge from `{source}` ({info.method} fine-tune of `{info.base_model}`"
            f"{', LoRA merged' if info.method == 'lora' else ''}).\n\n"
            "- `model.gguf`: for llama.cpp (`llama-server -m model.gguf`), llama-cpp-python, LM Studio\n"
            "- `Modelfile`: for Ollama (`ollama create NAME -f Modelfile`, then `ollama run NAME`)\n"
            "- `parity.json`: the parity check's report\n\n"
            f"Parity check ({checked}): {report.summary()}.\n")
