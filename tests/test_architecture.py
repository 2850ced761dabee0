"""The floors of docs/ARCHITECTURE.md hold, and their contract check fails when they do not.

The contracts live in pyproject.toml (``[tool.importlinter]``); ``lint-imports`` checks them on the
static import graph, function-level imports included.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("importlinter")

ROOT = Path(__file__).resolve().parents[1]
MAX_LOOSE_MODULES = 8


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` on the package under ``root`` with ``root``'s pyproject.toml."""
    script = "from importlinter.cli import lint_imports_command; lint_imports_command()"
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [sys.executable, "-c", script, "--no-cache", "--no-logo", str(root / "pyproject.toml")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def copy_of_the_project(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "purenn", tmp_path / "purenn", ignore=shutil.ignore_patterns("*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def append_line(path: Path, line: str) -> None:
    path.write_text(path.read_text() + f"\n{line}\n")


def test_the_package_keeps_every_contract():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        (  # a layer reaching up into the fit loop, inside a function as lazy imports do
            "nn/layers/base.py",
            "def _upward():\n    from purenn.training import fit  # noqa",
            "The engine never imports training",
        ),
        ("io/header.py", "import purenn.inference  # noqa", "Floors:"),
        ("serve/store.py", "import purenn.training.metrics  # noqa", "Serving never imports"),
        ("explain/overlay.py", "import purenn.cli.main  # noqa", "Nothing but"),
        (  # the cycle issue 22 removed: the shared handlers importing the app back
            "serve/handlers.py",
            "from purenn.serve import app  # noqa",
            "No import cycles",
        ),
        ("nn/losses.py", "import torch  # noqa", "Optional extras stay out of the core"),
    ],
)
def test_a_forbidden_import_breaks_its_contract(tmp_path, module, line, contract):
    root = copy_of_the_project(tmp_path)
    append_line(root / "purenn" / module, line)
    result = lint_imports(root)
    assert result.returncode != 0 and "Broken contracts" in result.stdout, result.stdout
    broken = result.stdout.split("Broken contracts", 1)[1]
    assert contract in broken, result.stdout


def test_at_most_eight_modules_loose_at_the_top():
    # Counted: every .py file directly in purenn/, __init__.py and __main__.py included.
    loose = sorted(path.name for path in (ROOT / "purenn").glob("*.py"))
    assert len(loose) <= MAX_LOOSE_MODULES, loose
