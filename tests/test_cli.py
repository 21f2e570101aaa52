"""The command line's one convention: each package adds its subcommands and names the function that runs each."""

import argparse
import subprocess
import sys

from tuneforge.cli import build_parser


def leaf_parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command words, parser) of every command a user can run, e.g. ("models", "list")."""
    groups = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    if not groups:
        yield path, parser
    for group in groups:
        for name, sub in group.choices.items():
            yield from leaf_parsers(sub, (*path, name))


def test_every_command_names_the_function_that_runs_it():
    leaves = dict(leaf_parsers(build_parser()))
    assert {"train", "tune", "chat", "generate", "eval", "compare", "export", "serve", "predict", "retrain",
            "curate"} <= {words[0] for words in leaves}
    assert {("data", "inspect"), ("data", "prepare"), ("models", "list"), ("models", "import"),
            ("models", "register"), ("monitor", "drift")} <= set(leaves)
    for words, parser in leaves.items():
        assert callable(parser.get_default("func")), f"tuneforge {' '.join(words)} sets no function to run it"
        # an argument of that name would replace the function (as `models register RUN` would a `run` default)
        assert all(action.dest != "func" for action in parser._actions), f"tuneforge {' '.join(words)}"


def test_help_imports_neither_torch_nor_pydantic():
    # `tuneforge --help` builds every parser: the registration modules keep heavy imports in the run functions
    code = "import sys; from tuneforge.cli import build_parser; build_parser(); " \
           "print(sorted(m for m in ('torch', 'transformers', 'pydantic', 'optuna', 'fastapi') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
