"""The README's two commands are the ones CI runs and the ones that work."""
import re

from tests.conftest import ROOT


def _commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## The two commands", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^    (pip install .+)$", section, flags=re.MULTILINE)


def test_readme_has_exactly_two_commands_and_ci_runs_the_test_one():
    install_and_run, run_tests = _commands()
    assert install_and_run.endswith("python -m bench run suites/smoke.yaml")
    assert run_tests.endswith("python -m pytest")
    assert "torch==2.13.0" in install_and_run and "torch==2.13.0" in run_tests
    ci_lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert run_tests in ci_lines


def test_readme_mentions_every_registered_backend():
    from backends import REGISTRY

    readme = (ROOT / "README.md").read_text()
    assert all(f"`{name}`" in readme for name in REGISTRY)
