"""`tuneforge models list` and `tuneforge models import`: the embedded and cached models from the command line.

The `models` group itself belongs to the registry (registry/commands.py), which sits above this
package: it adds these two actions, then its own (register, show, promote, rollback), and has
`list` print the registered versions after these models.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from tuneforge.models import catalog


def add_parsers(models_commands) -> None:
    """`list` and `import` under `tuneforge models`, each run by the function of its name."""
    listing = models_commands.add_parser("list", help="show embedded and cached models, and registered versions")
    listing.set_defaults(func=run_list)
    imp = models_commands.add_parser("import", help="import a GGUF file into the model cache",
                                     description="Dequantize a GGUF file once into a cached safetensors model "
                                     "directory, which later loads in seconds.")
    imp.add_argument("path", type=Path, metavar="PATH.gguf")
    imp.set_defaults(func=run_import)


def run_list(args: argparse.Namespace, console: Console) -> int:
    catalog.print_models(Console())
    return 0


def run_import(args: argparse.Namespace, console: Console) -> int:
    path = catalog.import_file(args.path)
    console.print(f"imported {args.path} -> {path}")
    return 0
