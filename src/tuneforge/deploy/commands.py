"""`tuneforge export`: its argument parser and its entry point (cli.py calls add_parsers)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from tuneforge.deploy.gguf import QUANTS
from tuneforge.errors import ConfigError

PARITY_FAILED_EXIT = 3  # as a failed gate in `tuneforge eval`
DTYPES = ("auto", "float32", "bfloat16", "float16")


def add_parsers(commands) -> None:
    """`export`, run by run_export."""
    export = commands.add_parser(
        "export", help="write a run's model for serving (merged or adapter), after a parity check",
        description="Export a run's fine-tuned model into DIR: --merge writes a full model (LoRA merged into the base) "
        "that plain transformers loads and vLLM serves; --adapter writes the PEFT adapter alone (vLLM's LoRA "
        "serving format). Before DIR is written, the export is loaded back from the written files and must answer "
        "golden prompts (the run's validation data) as the run's model does: logits within a tolerance (float32), "
        "identical greedy replies, ending at the end-of-turn token. An export that fails is not written; exits 3 "
        "and says why. DIR also gets README.md (model card) and parity.json. --format gguf writes DIR/model.gguf (LoRA "
        "merged first) for llama.cpp and Ollama, with an Ollama Modelfile, checked by reading the file back with "
        "transformers' GGUF reader and llama.cpp (when llama-cpp-python is installed).")
    export.set_defaults(func=run_export)
    export.add_argument("run", type=Path, metavar="RUN", help="a run directory or a checkpoint directory")
    export.add_argument("--to", type=Path, required=True, metavar="DIR", help="the export directory (new or empty)")
    mode = export.add_mutually_exclusive_group()
    mode.add_argument("--merge", dest="mode", action="store_const", const="merge",
                      help="a full model: safetensors, config, tokenizer with chat template, generation config")
    mode.add_argument("--adapter", dest="mode", action="store_const", const="adapter",
                      help="the LoRA adapter alone (PEFT format), with the tokenizer and generation config")
    export.add_argument("--format", choices=("hf", "gguf"), default="hf",
                        help="hf (default): transformers/PEFT files; gguf: one GGUF file + Ollama Modelfile (merged)")
    export.add_argument("--quant", default="q8_0", metavar="TYPE",
                        help=f"GGUF weights: {', '.join(QUANTS)} (default q8_0); K-quants (q4_k_m ...) are refused: "
                        "gguf-py cannot write them, use llama.cpp's llama-quantize on an f16 export")
    export.add_argument("--overwrite", action="store_true", help="replace DIR when it is not empty")
    export.add_argument("--prompts", type=Path, metavar="FILE",
                        help='golden prompts: JSONL of {"prompt": ...} or chat data (default: the run\'s validation data)')
    export.add_argument("--limit", type=int, default=8, metavar="N", help="golden prompts to check (default 8)")
    export.add_argument("--max-new-tokens", type=int, default=128, help="reply length limit in the check (default 128)")
    export.add_argument("--dtype", choices=DTYPES, default="auto",
                        help="merged weights' dtype (default auto: as the base or full weights are stored)")
    export.add_argument("--atol", type=float, metavar="X",
                        help="max |logit difference| allowed (default 1e-3 for float32, 0.25 float16, 1.0 bfloat16)")


def run_export(args: argparse.Namespace, console: Console) -> int:
    """0 when exported, PARITY_FAILED_EXIT when the parity check failed (nothing written); TuneforgeErrors propagate."""
    if args.prompts is not None and not args.prompts.is_file():
        raise ConfigError(f"--prompts {args.prompts}: no such file")
    if args.limit < 1 or args.max_new_tokens < 1:
        raise ConfigError("--limit and --max-new-tokens must be at least 1")
    result = gguf_export(args, console) if args.format == "gguf" else hf_export(args, console)
    report = result.report
    console.print(report.summary(), highlight=False)
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    if result.directory is None:
        for reason in report.reasons:
            console.print(f"[bold red]parity check failed:[/] {reason}", highlight=False)
        console.print(f"nothing was exported; {args.to} is unchanged. Report: {result.report_path}", highlight=False)
        return PARITY_FAILED_EXIT
    console.print(f"exported: {result.directory} (model card README.md, parity report parity.json)", highlight=False)
    return 0


def hf_export(args: argparse.Namespace, console: Console):
    from tuneforge.deploy.export import ExportRequest, export

    if args.mode is None:
        raise ConfigError("tuneforge export: pass --merge or --adapter (or --format gguf)")
    request = ExportRequest(args.run, args.to, args.mode, args.overwrite, args.prompts, args.limit,
                            args.max_new_tokens, args.dtype, args.atol)
    return export(request, console)


def gguf_export(args: argparse.Namespace, console: Console):
    from tuneforge.deploy.gguf import quant
    from tuneforge.deploy.gguf_export import GgufRequest, export_gguf

    if args.mode == "adapter":
        raise ConfigError("--format gguf writes a merged model; --adapter does not apply (drop it)")
    if args.dtype != "auto" or args.atol is not None:
        raise ConfigError("--dtype and --atol apply to --format hf; a GGUF export's precision is --quant, and its "
                          "tolerance is the quantisation's (docs/deploy.md)")
    quant(args.quant)  # refused before anything loads
    return export_gguf(GgufRequest(args.run, args.to, args.quant, args.overwrite, args.prompts, args.limit,
                                   args.max_new_tokens), console)
