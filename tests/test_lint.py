"""The checked-types criterion: the linter (ruff) and the type checker (mypy, strict on the core;
configured in pyproject.toml) report nothing, from the repository root as ``make lint`` runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_finds_nothing() -> None:
    done = _run("ruff", "check", ".")
    assert done.returncode == 0, f"ruff check . exited {done.returncode}:\n{done.stdout}{done.stderr}"


@pytest.mark.slow  # about 20-40 s without its cache (.mypy_cache), a second after
def test_mypy_finds_nothing() -> None:
    done = _run("mypy")
    assert done.returncode == 0, f"mypy exited {done.returncode}:\n{done.stdout}{done.stderr}"
