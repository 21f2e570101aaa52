"""The `tuneforge` command: parse arguments, load config, call one function. No logic lives here."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from rich.console import Console

from tuneforge import __version__
from tuneforge.errors import TuneforgeError

INTERRUPT_EXIT = {"SIGINT": 130, "SIGTERM": 143, "stop": 1}

EPILOG = """\
examples:
  tuneforge train configs/quickstart.yaml
  tuneforge train configs/quickstart.yaml --set train.learning_rate=1e-4 --set method=full
  tuneforge train configs/quickstart.yaml --resume
  tuneforge tune configs/tune-quickstart.yaml --trials 8
  tuneforge train my_run.yaml --set data.replay.ratio=0.3 --set train.kl_to_base=0.5
  tuneforge chat runs/quickstart
  tuneforge generate runs/quickstart "Who are you?"
  tuneforge models list
  tuneforge data inspect data/train.jsonl --report reports/data
  tuneforge data prepare my_run.yaml
  tuneforge eval runs/quickstart --data examples/identity/validation.jsonl --gate "token_f1 >= base + 0.1"
  tuneforge compare embedded:smollm2-135m-instruct runs/quickstart --data examples/identity/validation.jsonl --report reports/compare
  tuneforge export runs/quickstart --to exports/quickstart --merge
  tuneforge serve runs/quickstart --port 8000
  tuneforge train configs/classify-quickstart.yaml
  tuneforge predict runs/classify-quickstart examples/intents/test.jsonl --out predictions.jsonl
  tuneforge train configs/pretrain-quickstart.yaml
  tuneforge models register runs/quickstart --promote production
  tuneforge serve registry:production
  tuneforge monitor report --since 7d --out reports/monitor
  tuneforge monitor drift --config runs/quickstart --since 24h
  tuneforge curate --out data/curated.jsonl --train examples/identity/train.jsonl
  tuneforge retrain --from production --data data/curated.jsonl
  tuneforge models rollback
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tuneforge",
        description="Fine-tune a pretrained language model on your data, then talk to it.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tuneforge {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser(
        "train",
        help="fine-tune a model as a run file describes",
        description="Fine-tune a model as RUN.yaml describes (LoRA or full). Writes everything about the run "
        "into its output_dir: resolved config, data manifest, checkpoints, metrics.jsonl, TensorBoard "
        "events, loss_curve.png and the final model. Ctrl-C saves a checkpoint and stops.",
    )
    train.add_argument("config", type=Path, metavar="RUN.yaml", help="run file (see configs/)")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. train.max_steps=20 (repeatable)")
    train.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    train.add_argument("--overwrite", action="store_true", help="replace an existing run in output_dir")
    train.add_argument("--nproc", type=int, default=1, metavar="N",
                       help="train in N processes (DDP; one per GPU on CUDA, gloo on CPU); the batch per step "
                       "becomes batch_size x grad_accum x N. Same as: accelerate launch --multi_gpu --num_processes N "
                       "-m tuneforge.cli train ..., or torchrun --nproc-per-node N -m tuneforge.cli train ...")

    search = commands.add_parser(
        "tune",
        help="search hyperparameters (Optuna) over a run file's tune.space",
        description="Search the hyperparameters RUN.yaml's tune section names (TPE sampling, median pruning on the "
        "validation loss every eval.every_steps). Each trial trains in output_dir/trial-NNN; the study lives in "
        "output_dir/tune.db, so --resume continues an interrupted search. Writes trials.json, "
        "optimization_history.png and best.yaml (the best trial's run file, for tuneforge train).",
    )
    search.add_argument("config", type=Path, metavar="RUN.yaml", help="run file with a tune section")
    search.add_argument("--trials", type=int, metavar="N", help="trials to finish (overrides tune.trials)")
    search.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. train.max_steps=20 (repeatable)")
    search.add_argument("--resume", action="store_true", help="continue the search in output_dir")
    search.add_argument("--overwrite", action="store_true", help="replace an existing search in output_dir")

    for name, help_text in (("chat", "talk with a model in the terminal"), ("generate", "answer one prompt")):
        sub = commands.add_parser(name, help=help_text, description=f"{help_text[0].upper()}{help_text[1:]}. "
                                  "MODEL is a run directory, a checkpoint, a local model directory, a hub id, "
                                  "a .gguf file or embedded:smollm2-135m-instruct.")
        sub.add_argument("model", metavar="MODEL")
        if name == "generate":
            sub.add_argument("prompt", help="the user message")
        sub.add_argument("--system", help="system message (default: the chat template's own)")
        sub.add_argument("--max-new-tokens", type=int, default=256)
        sub.add_argument("--temperature", type=float, default=0.0, help="0 (default) decodes greedily")
        sub.add_argument("--top-p", type=float, default=1.0)

    evaluate = commands.add_parser(
        "eval", help="metrics of a model on held-out data, with gates",
        description="Evaluate a model (a run directory, checkpoint or any model reference) on held-out data: loss, "
        "perplexity, generation metrics, and for a run its base model beside it (gates relative to the base and the "
        "forgetting check). Writes metrics.json and examples.jsonl; exits 3 when a gate fails, naming it.")
    evaluate.add_argument("model", metavar="MODEL_OR_RUN")
    evaluate.add_argument("--data", action="append", default=[], metavar="FILE",
                          help="held-out data (repeatable; default: the run's data.validation)")
    evaluate.add_argument("--config", type=Path, metavar="RUN.yaml", help="take the eval section from this run file")
    evaluate.add_argument("--metrics", type=lambda text: [m for m in text.split(",") if m], default=[],
                          help="comma-separated: exact_match, contains, token_f1, rouge_l, bleu, module:function")
    evaluate.add_argument("--gate", dest="gates", action="append", default=[], metavar="GATE",
                          help='a threshold, e.g. "exact_match >= 0.8" or "perplexity_general <= base * 1.1" (repeatable)')
    evaluate.add_argument("--base", help="the base model to compare with (default: the run's base model)")
    evaluate.add_argument("--out", type=Path, help="results directory (default: RUN/eval/DATA_NAME)")
    evaluate.add_argument("--limit", type=int, help="evaluate the first N records only")
    evaluate.add_argument("--max-new-tokens", type=int)
    evaluate.add_argument("--batch-size", type=int)

    compare = commands.add_parser(
        "compare", help="models side by side on the same examples",
        description="Evaluate several models (base, fine-tunes, checkpoints) on the same examples with the same greedy "
        "decoding: a summary with changes from the first model, the examples that changed most, and with --report "
        "an HTML page with charts.")
    compare.add_argument("models", nargs="+", metavar="MODEL")
    compare.add_argument("--data", action="append", required=True, metavar="FILE")
    compare.add_argument("--metrics", type=lambda text: [m for m in text.split(",") if m], default=[])
    compare.add_argument("--report", type=Path, metavar="DIR", help="write DIR/index.html with PNG charts")
    compare.add_argument("--out", type=Path, default=Path("compare-results"), help="where summary.json and examples.jsonl go")
    compare.add_argument("--max-new-tokens", type=int, default=64)
    compare.add_argument("--limit", type=int, help="the first N records only")

    from tuneforge.deploy.commands import add_export_parser

    add_export_parser(commands)
    from tuneforge.serve.commands import add_serve_parser

    add_serve_parser(commands)
    from tuneforge.classify.predict import add_predict_parser

    add_predict_parser(commands)
    from tuneforge.registry.retrain import add_retrain_parser

    add_retrain_parser(commands)
    from tuneforge.monitor.commands import add_curate_parser, add_monitor_parser

    add_monitor_parser(commands)
    add_curate_parser(commands)

    data = commands.add_parser("data", help="inspect or prepare data", description="Inspect or prepare data.")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    inspect = data_commands.add_parser(
        "inspect", help="format, counts, token lengths, duplicates, PII and problems of data files",
        description="Read data files (JSONL, JSON, CSV, Parquet, text; folders, globs, hf:NAME) and print the "
        "detected format, record and role counts, a token-length histogram under the model's tokenizer, "
        "exact duplicates, PII found, and every record that training would reject, with its line.")
    inspect.add_argument("files", nargs="+", metavar="FILE", help="file, folder, glob or hf:NAME[#SPLIT]")
    inspect.add_argument("--config", type=Path, metavar="RUN.yaml",
                         help="take model, format, columns, roles, template and max_seq_length from a run file")
    inspect.add_argument("--model", help="tokenizer to measure with (default: the embedded model)")
    inspect.add_argument("--format", help="auto (default), chat, sharegpt, alpaca, preference, feedback, text, classification")
    inspect.add_argument("--template", help="tokenizer (default), chatml, llama3 or alpaca")
    inspect.add_argument("--max-seq-length", type=int, help="flag records longer than this (default 1024)")
    inspect.add_argument("--report", type=Path, metavar="DIR", help="also write DIR/index.html with PNG charts")
    prep = data_commands.add_parser(
        "prepare", help="validate, clean, tokenize and cache a run's data",
        description="Validate, clean, split and tokenize the data a run file names, into a cache keyed by the "
        "content of the inputs, the tokenizer and the settings; `tuneforge train` then starts from it.")
    prep.add_argument("config", type=Path, metavar="RUN.yaml")
    prep.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override a config value (repeatable)")

    models = commands.add_parser("models", help="list, import and register models; promote, roll back",
                                 description="List or import models; the model registry's versions and aliases.")
    models_commands = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    listing = models_commands.add_parser("list", help="show embedded and cached models, and registered versions")
    imp = models_commands.add_parser("import", help="import a GGUF file into the model cache",
                                     description="Dequantize a GGUF file once into a cached safetensors model "
                                     "directory, which later loads in seconds.")
    imp.add_argument("path", type=Path, metavar="PATH.gguf")
    from tuneforge.registry.commands import add_registry_arguments

    add_registry_arguments(models_commands, listing)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console(stderr=True)
    try:
        match args.command:
            case "train":
                return run_train(args, console)
            case "tune":
                return run_tune(args, console)
            case "chat" | "generate":
                return run_chat(args, console)
            case "models":
                return run_models(args, console)
            case "data":
                return run_data(args, console)
            case "eval":
                from tuneforge.evaluate.commands import EvalOptions, run_eval

                options = EvalOptions(args.model, args.data, args.config, args.metrics, args.gates, args.base,
                                      args.out, args.limit, args.max_new_tokens, args.batch_size)
                return run_eval(options, console)
            case "export":
                from tuneforge.deploy.commands import run_export

                return run_export(args, console)
            case "predict":
                from tuneforge.classify.predict import run_predict

                return run_predict(args, console)
            case "serve":
                from tuneforge.serve.commands import run_serve

                return run_serve(args, console)
            case "retrain":
                from tuneforge.registry.retrain import run_retrain

                return run_retrain(args, console)
            case "monitor" | "curate":
                from tuneforge.monitor.commands import run_curate, run_monitor

                return run_monitor(args, console) if args.command == "monitor" else run_curate(args, console)
            case "compare":
                from tuneforge.evaluate.commands import run_compare

                return run_compare(args.models, args.data, args.metrics, args.report, args.out,
                                   args.max_new_tokens, args.limit, console)
    except TuneforgeError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False)
        return 2
    except KeyboardInterrupt:  # outside the training loop, which handles Ctrl-C itself
        console.print("interrupted")
        return 130
    return 0


def run_train(args, console: Console) -> int:
    from tuneforge.config import load_config

    config = load_config(args.config, args.overrides)  # fails here, before anything heavy is imported
    if config.task == "classify":
        from tuneforge.classify.train import train_command

        return train_command(config, args.config, args.resume, args.overwrite, args.nproc, console)
    from tuneforge.train.distributed import is_main_process, launch, launched

    if args.nproc != 1 and not launched():
        argv = ["train", str(args.config), *[f"--set={item}" for item in args.overrides],
                *(["--resume"] if args.resume else []), *(["--overwrite"] if args.overwrite else [])]
        return launch(argv, args.nproc)
    if not is_main_process():
        console = Console(stderr=True, quiet=True)  # errors still print (main() has its own console)
    from tuneforge.train.loop import train

    result = train(config, resume=args.resume, overwrite=args.overwrite, console=console)
    if result.interrupted_by:
        console.print(f"stopped by {result.interrupted_by} at step {result.state.step}/{result.total_steps}; "
                      f"checkpoint saved. Continue with: {continue_command('train', args.config, args.overrides)}",
                      highlight=False, markup=False, soft_wrap=True)
        return INTERRUPT_EXIT[result.interrupted_by]
    console.print(f"done: {result.state.step} steps; run directory {result.run_dir}")
    if result.eval_loss_before is not None and result.eval_loss_after is not None:
        console.print(f"validation loss: before {result.eval_loss_before:.4f} -> after {result.eval_loss_after:.4f}")
        if config.task == "pretrain":
            from tuneforge.train.pretrain import perplexity

            console.print(f"held-out perplexity: before {perplexity(result.eval_loss_before):.2f} -> "
                          f"after {perplexity(result.eval_loss_after):.2f}")
    console.print(f"talk to it: tuneforge chat {result.run_dir}")
    return 0


def continue_command(command: str, config: Path, overrides: list[str]) -> str:
    """The command that resumes a stopped run: with the --set overrides it was started with, quoted for a shell."""
    sets = [f"--set {shlex.quote(item)}" for item in overrides]
    return " ".join(["tuneforge", command, shlex.quote(str(config)), *sets, "--resume"])


def run_tune(args, console: Console) -> int:
    from tuneforge.config import load_config

    config = load_config(args.config, args.overrides)
    from tuneforge.evaluate.tune import tune

    result = tune(config, trials=args.trials, resume=args.resume, overwrite=args.overwrite, console=console,
                  source=args.config)
    if result.interrupted_by:
        console.print(f"search stopped by {result.interrupted_by}: {result.finished}/{result.trials} trials "
                      f"finished. Continue with: {continue_command('tune', args.config, args.overrides)}",
                      highlight=False, markup=False, soft_wrap=True)
        return INTERRUPT_EXIT[result.interrupted_by]
    if result.best_config:
        console.print(f"train the best: tuneforge train {result.best_config}")
    return 0


def run_chat(args, console: Console) -> int:
    from tuneforge.models.generate import Sampling
    from tuneforge.models.load import load_for_inference
    from tuneforge.chat import chat_loop, answer_once

    sampling = Sampling(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p)
    model, tokenizer = load_for_inference(args.model)
    if args.command == "generate":
        answer_once(model, tokenizer, args.prompt, args.system, sampling, sys.stdout)
    else:
        chat_loop(model, tokenizer, args.system, sampling, console)
    return 0


def run_data(args, console: Console) -> int:
    from tuneforge.config import load_config

    if args.data_command == "prepare":
        config = load_config(args.config, args.overrides)
        from tuneforge.data.prepare import describe, prepare
        from tuneforge.models.tokenizer import training_tokenizer

        tokenizer, stop_ids = training_tokenizer(config.model.name, config.data.template)
        prepared = prepare(config.data, tokenizer, stop_ids, config.train.max_seq_length, config.train.seed)
        console.print(describe(prepared), highlight=False)
        return 0
    from tuneforge.data.inspect import inspect_command

    config = load_config(args.config) if args.config else None
    return inspect_command(args, config, Console())


def run_models(args, console: Console) -> int:
    from tuneforge.models import catalog

    if args.models_command == "import":
        path = catalog.import_file(args.path)
        console.print(f"imported {args.path} -> {path}")
        return 0
    if args.models_command == "list":
        catalog.print_models(Console())
    from tuneforge.registry.commands import run_registry

    return run_registry(args, console)


if __name__ == "__main__":
    sys.exit(main())
