"""What the backends' cached builds share: ONNX and OpenVINO exports, llm-compressor checkpoints.

Each is a directory under `cache_dir()`, keyed by a hash of the source model's files and the build's
settings, built atomically under a lock (bench.core.cache) and complete once its manifest (a JSON file
saying what built it) is written. `build_cached` returns the typed answer: where, what the manifest
says, whether this call found it or built it, and how long the call took.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from bench.core.cache import build_dir_atomically
from bench.core.timing import Clock


@dataclass(frozen=True)
class Built:
    path: Path
    manifest: dict
    cached: bool  # True: found in the cache; False: built by this call
    seconds: float  # time the call took (hashing the source, plus building when not cached)


B = TypeVar("B", bound=Built)


def hf_source_files(model_dir: Path, error: type[Exception], who: str) -> list[Path]:
    """The files of a local HF model directory, sorted (what a cache key hashes); `error` if it is not one."""
    if not (model_dir / "config.json").is_file():
        raise error(f"{model_dir}: not a local Hugging Face model directory (no config.json); {who} builds from a "
                    f"local directory (a built-in model name or a path)")
    return sorted(p for p in model_dir.iterdir() if p.is_file() and not p.name.startswith("."))


def build_cached(kind: type[B], target: Path, manifest: str, fill: Callable[[Path], None], clock: Clock) -> B:
    """`target`, built by `fill(tmp)` (which writes `manifest` last) unless complete; `clock` started by the caller."""
    cached = (target / manifest).is_file()
    build_dir_atomically(target, fill, lambda path: (path / manifest).is_file())
    clock.mark()
    return kind(target, json.loads((target / manifest).read_text()), cached, clock.stamps_ns()[-1] / 1e9)
