"""`tuneforge eval` and `tuneforge compare`: their parsers, and the functions that run them.

The work itself is in evaluate/workflow.py, imported when a command runs (it loads torch), so
`tuneforge --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

GATE_FAILED_EXIT = 3  # `tuneforge eval` when a gate failed; `models promote` refuses such a version with it


def metric_list(text: str) -> list[str]:
    """--metrics a,b,c: the names, empty ones dropped."""
    return [m for m in text.split(",") if m]


def add_parsers(commands) -> None:
    """`eval` and `compare`, each run by the function of its name."""
    evaluate = commands.add_parser(
        "eval", help="metrics of a model on held-out data, with gates",
        description="Evaluate a model (a run directory, checkpoint or any model reference) on held-out data: loss, "
        "perplexity, generation metrics, and for a run its base model beside it (gates relative to the base and the "
        "forgetting check). Writes metrics.json and examples.jsonl; exits 3 when a gate fails, naming it.")
    evaluate.add_argument("model", metavar="MODEL_OR_RUN")
    evaluate.add_argument("--data", action="append", default=[], metavar="FILE",
                          help="held-out data (repeatable; default: the run's data.validation)")
    evaluate.add_argument("--config", type=Path, metavar="RUN.yaml", help="take the eval section from this run file")
    evaluate.add_argument("--metrics", type=metric_list, default=[],
                          help="comma-separated: exact_match, contains, token_f1, rouge_l, bleu, module:function")
    evaluate.add_argument("--gate", dest="gates", action="append", default=[], metavar="GATE",
                          help='a threshold, e.g. "exact_match >= 0.8" or "perplexity_general <= base * 1.1" (repeatable)')
    evaluate.add_argument("--base", help="the base model to compare with (default: the run's base model)")
    evaluate.add_argument("--out", type=Path, help="results directory (default: RUN/eval/DATA_NAME)")
    evaluate.add_argument("--limit", type=int, help="evaluate the first N records only")
    evaluate.add_argument("--max-new-tokens", type=int)
    evaluate.add_argument("--batch-size", type=int)
    evaluate.set_defaults(func=run_eval)

    compare = commands.add_parser(
        "compare", help="models side by side on the same examples",
        description="Evaluate several models (base, fine-tunes, checkpoints) on the same examples with the same greedy "
        "decoding: a summary with changes from the first model, the examples that changed most, and with --report "
        "an HTML page with charts.")
    compare.add_argument("models", nargs="+", metavar="MODEL")
    compare.add_argument("--data", action="append", required=True, metavar="FILE")
    compare.add_argument("--metrics", type=metric_list, default=[])
    compare.add_argument("--report", type=Path, metavar="DIR", help="write DIR/index.html with PNG charts")
    compare.add_argument("--out", type=Path, default=Path("compare-results"), help="where summary.json and examples.jsonl go")
    compare.add_argument("--max-new-tokens", type=int, default=64)
    compare.add_argument("--limit", type=int, help="the first N records only")
    compare.set_defaults(func=run_compare)


def run_eval(args, console: Console) -> int:
    from tuneforge.evaluate.workflow import EvalOptions, evaluate_model  # torch

    options = EvalOptions(args.model, args.data, args.config, args.metrics, args.gates, args.base,
                          args.out, args.limit, args.max_new_tokens, args.batch_size)
    return evaluate_model(options, console)


def run_compare(args, console: Console) -> int:
    from tuneforge.evaluate.workflow import compare_models  # torch

    return compare_models(args.models, args.data, args.metrics, args.report, args.out, args.max_new_tokens,
                          args.limit, console)
