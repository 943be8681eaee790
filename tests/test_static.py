"""The code stays typed and linted: mypy with no module exempted, ruff clean (versions pinned in the `test` extra)."""
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def _tool(name: str) -> None:
    if shutil.which(name) is None:
        pytest.skip(f"{name} is not installed: pip install -e '.[test]'")


def test_ruff_is_clean():
    _tool("ruff")
    proc = subprocess.run(["ruff", "check", "bench", "backends", "tests", "benchmarks"], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:]


def test_mypy_passes_with_no_module_exempted():
    _tool("mypy")
    assert "ignore_errors" not in (ROOT / "pyproject.toml").read_text()
    proc = subprocess.run([sys.executable, "-m", "mypy", "bench", "backends"], cwd=ROOT, capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:]
