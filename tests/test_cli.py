"""The command line stays light: --help and suite validation never import torch or transformers."""
import subprocess
import sys

from tests.conftest import ROOT, run_bench


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_help_does_not_import_heavy_libraries():
    modules = _modules_after("import sys\nfrom bench.cli import main\ntry:\n    main(['--help'])\n"
                             "except SystemExit:\n    pass")
    assert not {"torch", "transformers", "numpy", "scipy"} & modules


def test_validating_a_suite_does_not_import_torch():
    modules = _modules_after("from bench.cli import main\nmain(['validate', 'suites/smoke.yaml'])")
    assert "torch" not in modules and "transformers" not in modules


def test_help_lists_the_commands(tmp_path):
    out = run_bench("--help", cwd=tmp_path).stdout
    for command in ["run", "report", "validate", "model", "backends"]:
        assert command in out
