"""The `tuneforge` command: the top-level parser, each package's subcommands, and dispatch. No logic lives here.

Each package adds its own subcommands with `add_parsers(commands)` and sets `func` on each (argparse's
`set_defaults(func=...)` idiom; not `run`, which `models register RUN` and `export RUN` take as an
argument) to the function that runs it, `func(args, console) -> exit status`; main() parses, calls
it, and turns a TuneforgeError into exit status 2 and Ctrl-C outside training into 130.  The registration modules
import nothing heavy at the top (torch, transformers, pydantic), so `tuneforge --help` stays fast.
"""

from __future__ import annotations

import argparse
import sys

from rich.console import Console

from tuneforge import __version__, chat
from tuneforge.data import commands as data_commands
from tuneforge.deploy import commands as deploy_commands
from tuneforge.errors import TuneforgeError
from tuneforge.evaluate import commands as evaluate_commands
from tuneforge.monitor import commands as monitor_commands
from tuneforge.platform import commands as platform_commands
from tuneforge.registry import commands as registry_commands
from tuneforge.serve import commands as serve_commands
from tuneforge.serve import predict
from tuneforge.train import commands as train_commands

# In the order `tuneforge --help` lists them.
REGISTRATIONS = (
    train_commands.add_parsers,  # train, tune
    chat.add_parsers,  # chat, generate
    evaluate_commands.add_parsers,  # eval, compare
    deploy_commands.add_parsers,  # export
    serve_commands.add_parsers,  # serve
    platform_commands.add_parsers,  # platform
    predict.add_parsers,  # predict
    monitor_commands.add_parsers,  # monitor, curate
    data_commands.add_parsers,  # data inspect | prepare
    registry_commands.add_parsers,  # retrain, models (with the models package's list and import)
)

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
  python -m tuneforge.data.shapes runs/shapes && tuneforge train configs/image-quickstart.yaml
  tuneforge predict runs/image-quickstart runs/shapes/test
  tuneforge train configs/pretrain-quickstart.yaml
  tuneforge models register runs/quickstart --promote production
  tuneforge serve registry:production
  tuneforge platform embedded:smollm2-135m-instruct --api-key KEY
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
    for add_parsers in REGISTRATIONS:
        add_parsers(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console(stderr=True)
    try:
        return args.func(args, console)
    except TuneforgeError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False)
        return 2
    except KeyboardInterrupt:  # outside the training loop, which handles Ctrl-C itself
        console.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
