"""The packages depend in one direction (DESIGN.md: cli > serve > deploy, registry, monitor > train >
evaluate > data > models > config > errors): the layers contract in pyproject.toml, checked by
import-linter, and shown to fail when a back edge is added."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def lint(project: Path, source: Path) -> subprocess.CompletedProcess:
    """lint-imports over the package found in `source`, with the contract of `project`'s pyproject.toml."""
    return subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports; "
         "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True))"],
        cwd=project, env={"PYTHONPATH": str(source), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
        timeout=300,
    )


def test_packages_depend_in_one_direction():
    result = lint(ROOT, ROOT / "src")
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_back_edge_breaks_the_contract(tmp_path):
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(ROOT / "src" / "tuneforge", tmp_path / "src" / "tuneforge",
                    ignore=shutil.ignore_patterns("__pycache__"))
    models = tmp_path / "src" / "tuneforge" / "models" / "__init__.py"
    models.write_text(models.read_text() + "\nfrom tuneforge.train import driver  # a back edge\n")
    result = lint(tmp_path, tmp_path / "src")
    assert result.returncode == 1
    assert "tuneforge.models is not allowed to import tuneforge.train" in result.stdout
