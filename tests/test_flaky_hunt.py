"""benchmarks/flaky_hunt.py: JUnit XML of several runs read back into the tests that failed at least once, their
wall times per run, and the slowest tests; a real run of pytest on a file with a known failure, with a CPU hog."""
from __future__ import annotations

import importlib.util
import json
import sys

from tests.conftest import ROOT

_spec = importlib.util.spec_from_file_location("flaky_hunt", ROOT / "benchmarks" / "flaky_hunt.py")
hunt = sys.modules["flaky_hunt"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hunt)

KNOWN = """
import pathlib

import pytest

def test_always():
    pass

def test_once():
    marker = pathlib.Path("MARKER")
    if not marker.exists():
        marker.touch()
        raise AssertionError("first run only")

class TestGroup:
    @pytest.mark.parametrize("x", [1, 2])
    def test_param(self, x):
        assert x == 1, "two is not one"

@pytest.mark.skip(reason="never")
def test_skipped():
    pass
"""


def test_two_runs_with_a_hog_list_the_tests_that_failed_in_either(tmp_path):
    marker = tmp_path / "flaky-hunt-marker"  # test_once fails in the first run only
    (tmp_path / "test_known.py").write_text(KNOWN.replace("MARKER", str(marker)))
    code = hunt.main(["--runs", "2", "--hogs", "1", "--out", str(tmp_path / "out"), "--",
                      str(tmp_path / "test_known.py"), "-q"])
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert code == 1 and marker.exists()
    counts = [(r["passed"], r["failed"], r["skipped"], r["hogs"]) for r in summary["runs"]]
    assert counts == [(2, 2, 1, 1), (3, 1, 1, 1)]
    failed = summary["failed_at_least_once"]
    once = next(t for t in failed if t.endswith("::test_once"))
    param = next(t for t in failed if t.endswith("::TestGroup::test_param[2]"))
    assert set(failed) == {once, param}
    assert [f["run"] for f in failed[once]] == [1] and "first run only" in failed[once][0]["message"]
    assert [f["run"] for f in failed[param]] == [1, 2] and "two is not one" in failed[param][0]["message"]
    assert {s["test"] for s in summary["slowest"]} >= {once, param} and all(f["seconds"] >= 0 for f in failed[param])
