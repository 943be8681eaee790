"""Test helper: a managed side environment's interpreter, created with the CLI when missing.

A test that needs one (vLLM's, OpenVINO's, llm-compressor's) asks for it here: if the env does not exist
it runs `python -m bench env create NAME` (minutes, once per machine; the measured times are in the
README), and skips with the command and the tail of its output when the env cannot be built here.
`BENCH_TEST_SKIP_ENVS=openvino,llmcompressor` skips the tests of the envs it names instead of building
them (a lever for a CI short of time; the tests stay real where the envs exist or may be built).
"""
from __future__ import annotations

import os

import pytest

from bench.exec import envs
from tests.conftest import run_bench


def side_env_python(name: str, workdir) -> str:
    if envs.info(name) is None and name in os.environ.get("BENCH_TEST_SKIP_ENVS", "").split(","):
        pytest.skip(f"the {name} side env does not exist and BENCH_TEST_SKIP_ENVS names it "
                    f"({envs.create_command(name)} builds it)")
    if envs.info(name) is None:
        proc = run_bench("env", "create", name, cwd=workdir, timeout=1800, check_exit=None)
        if proc.returncode != 0:
            pytest.skip(f"the {name} side env could not be created ({envs.create_command(name)}):\n"
                        f"{proc.stderr[-2000:]}")
    return envs.interpreter_path(f"env:{name}")
