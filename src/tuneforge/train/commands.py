"""`tuneforge train` and `tuneforge tune`: their parsers, and the functions that run them.

`train --nproc N` re-launches the same command line under N processes (train/distributed.py);
each worker parses it again and trains its share.  The heavy modules (torch, transformers, the
config's pydantic) are imported inside the run functions, so `tuneforge --help` stays fast.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from rich.console import Console

from tuneforge.errors import ConfigError
from tuneforge.train.distributed import is_main_process, launch, launched
from tuneforge.train.signals import INTERRUPT_EXIT


def add_parsers(commands) -> None:
    """`train` and `tune`, each run by the function below it."""
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
    train.set_defaults(func=run_train)

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
    search.set_defaults(func=run_tune)


def run_train(args, console: Console) -> int:
    from tuneforge.config import load_config  # pydantic: kept out of `tuneforge --help`

    config = load_config(args.config, args.overrides)  # fails here, before anything heavy is imported
    from tuneforge.train.methods import method_for  # torch, transformers

    kind = method_for(config)
    if args.nproc != 1 and not kind.multi_process:
        raise ConfigError(f"{args.config}: task: {config.task} trains in one process; drop --nproc {args.nproc}")
    if args.nproc != 1 and not launched():
        argv = ["train", str(args.config), *[f"--set={item}" for item in args.overrides],
                *(["--resume"] if args.resume else []), *(["--overwrite"] if args.overwrite else [])]
        return launch(argv, args.nproc)
    if not is_main_process():
        console = Console(stderr=True, quiet=True)  # errors still print (main() has its own console)
    from tuneforge.train.driver import train  # (loaded with method_for above)

    result = train(config, resume=args.resume, overwrite=args.overwrite, console=console)
    if result.interrupted_by:
        console.print(f"stopped by {result.interrupted_by} at step {result.state.step}/{result.total_steps}; "
                      f"checkpoint saved. Continue with: {continue_command('train', args.config, args.overrides)}",
                      highlight=False, markup=False, soft_wrap=True)
        return INTERRUPT_EXIT[result.interrupted_by]
    console.print(f"done: {result.state.step} steps; run directory {result.run_dir}")
    for line in kind.closing(result):
        console.print(line)
    return 0


def continue_command(command: str, config: Path, overrides: list[str]) -> str:
    """The command that resumes a stopped run: with the --set overrides it was started with, quoted for a shell."""
    sets = [f"--set {shlex.quote(item)}" for item in overrides]
    return " ".join(["tuneforge", command, shlex.quote(str(config)), *sets, "--resume"])


def run_tune(args, console: Console) -> int:
    from tuneforge.config import load_config  # pydantic: kept out of `tuneforge --help`

    config = load_config(args.config, args.overrides)
    from tuneforge.train.search import tune  # optuna, torch

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
