"""What the backends' cached builds share: ONNX and OpenVINO exports, llm-compressor checkpoints.

Each is a directory under `cache_dir()`, keyed by a hash of the source model's files and the build's
settings, built atomically under a lock (bench.core.cache) and complete once its manifest (a JSON file
saying what built it) is written. `build_cached` returns the typed answer: where, what the manifest
says, whether this call found it or built it, and how long the call took.

A conversion that runs in a child Python process (`run_python`) is measured there: its wall time and its
peak RSS, the kernel's high-water mark (VmHWM) of that process read by a wrapper just before it exits
(VmHWM starts fresh at exec; `ru_maxrss` would carry over the parent's peak across fork+exec). The build
writes both in its manifest under `conversion`, so a cached build still reports what making it cost.
"""
from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from bench.core.cache import build_dir_atomically
from bench.core.timing import Clock

PEAK_MARK = "BENCH_CONVERSION_VMHWM_KB"
# runs `python -m MODULE ARGS` or `python SCRIPT ARGS`; prints the process's own peak RSS last, whatever the outcome
_WRAPPER = f"""
import os, runpy, sys
target, sys.argv = sys.argv[1], sys.argv[2:]
try:
    if target == "-m":
        runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
    else:  # as `python SCRIPT`: its folder first on sys.path
        sys.argv.insert(0, target)
        sys.path.insert(0, os.path.dirname(os.path.abspath(target)))
        runpy.run_path(target, run_name="__main__")
finally:
    hwm = [l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM:")]
    print("{PEAK_MARK}", hwm[0] if hwm else "", file=sys.stderr, flush=True)
"""
PEAK_DEFINITION = "VmHWM of the conversion's Python process at its exit (its peak RSS since its exec)"


@dataclass(frozen=True)
class ChildRun:
    """A finished child conversion: exit status, its output (stdout + stderr), wall time, peak RSS."""

    returncode: int
    output: str
    seconds: float
    peak_rss_bytes: int | None  # None where /proc has no VmHWM

    def manifest(self) -> dict:
        """What a build's manifest says about its conversion (`conversion`)."""
        return {"seconds": self.seconds, "peak_rss_bytes": self.peak_rss_bytes, "peak_rss": PEAK_DEFINITION}


def run_python(args: list[str], env: dict[str, str] | None = None, cwd: Path | str | None = None,
               timeout_s: float | None = None) -> ChildRun:
    """`python ARGS` (ARGS: `-m MODULE ...` or `SCRIPT ...`) in a child process of this interpreter, measured."""
    command = [sys.executable, "-c", _WRAPPER, *args]
    clock = Clock()
    clock.start()
    proc = subprocess.run(command, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s)
    clock.mark()
    lines = (proc.stdout + proc.stderr).splitlines()
    marks = [line.split() for line in lines if line.startswith(PEAK_MARK)]
    peak_kb = marks[-1][1] if marks and len(marks[-1]) > 1 else None
    output = "\n".join(line for line in lines if not line.startswith(PEAK_MARK))
    return ChildRun(proc.returncode, output, clock.stamps_ns()[-1] / 1e9, int(peak_kb) * 1024 if peak_kb else None)


@dataclass(frozen=True)
class Built:
    path: Path
    manifest: dict
    cached: bool  # True: found in the cache; False: built by this call
    seconds: float  # time the call took (hashing the source, plus building when not cached)

    def conversion(self) -> dict:
        """The description fields of what making it cost (bench/core/description.py), from its manifest: None
        for a build from before they were recorded."""
        made = self.manifest.get("conversion") or {}
        return {"conversion_seconds": made.get("seconds"), "conversion_peak_rss_bytes": made.get("peak_rss_bytes")}


B = TypeVar("B", bound=Built)


def hf_source_files(model_dir: Path, error: type[Exception], who: str) -> list[Path]:
    """The files of a local HF model directory, sorted (what a cache key hashes); `error` if it is not one."""
    if not (model_dir / "config.json").is_file():
        raise error(f"{model_dir}: not a local Hugging Face model directory (no config.json); {who} builds from a "
                    f"local directory (a built-in model name or a path)")
    return sorted(p for p in model_dir.iterdir() if p.is_file() and not p.name.startswith("."))


def known_gap(output: str, gaps: tuple[tuple[str, str], ...], model_dir: Path) -> str | None:
    """Why a failed conversion cannot be done for this model, or None for an unknown failure.

    `gaps` pairs a text the converter prints when it refuses an architecture (not a bench bug) with the
    reason in words; `{architecture}` (from the model's config.json) and `{last_line}` (of `output`) are
    filled in. The caller skips the case with it (NotSupportedHere)."""
    for marker, why in gaps:
        if marker in output:
            config = json.loads((model_dir / "config.json").read_text())
            return why.format(architecture=(config.get("architectures") or ["?"])[0],
                              last_line=output.strip().splitlines()[-1])
    return None


def build_cached(kind: type[B], target: Path, manifest: str, fill: Callable[[Path], None], clock: Clock) -> B:
    """`target`, built by `fill(tmp)` (which writes `manifest` last) unless complete; `clock` started by the caller."""
    cached = (target / manifest).is_file()
    build_dir_atomically(target, fill, lambda path: (path / manifest).is_file())
    clock.mark()
    return kind(target, json.loads((target / manifest).read_text()), cached, clock.stamps_ns()[-1] / 1e9)
