"""Where bench's managed side environments live and whether one is complete; nothing here builds one.

`bench/exec/envs.py` builds them (`python -m bench env create NAME`) and resolves a suite's
`interpreter: env:NAME`; a backend that runs a tool in one (the llm-compressor job of
`backends/llmcompressor/`) finds its interpreter here. An env is `cache_dir()/envs/<name>`, complete
once its marker file (spec, versions, build time) was written last.
"""
from __future__ import annotations

from pathlib import Path

from bench.core.cache import cache_dir

MARKER = "bench-env.json"  # written last into a complete env: its spec, versions and build time


def env_dir(name: str) -> Path:
    return cache_dir() / "envs" / name


def python_of(env: Path) -> Path:
    return env / "bin" / "python"


def create_command(name: str) -> str:
    return f"python -m bench env create {name}"


def is_complete(env: Path) -> bool:
    return (env / MARKER).is_file() and python_of(env).exists()


def env_python(name: str) -> Path | None:
    """The interpreter of managed env `name`, or None when it was not created (or never finished)."""
    env = env_dir(name)
    return python_of(env) if is_complete(env) else None
