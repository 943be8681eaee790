"""The reference variant's log-probabilities, kept in bench's cache (not in the run directory) and reused.

An entry is `<cache>/logprobs/<key>/`: one float32 `.npy` file per window (the window's scored rows x the
vocabulary, written chunk by chunk) and `meta.json` (what the key was made of, the windows' row counts,
who wrote it). The key is a hash of everything that decides those numbers: the reference model's bytes
(`tree_digest` of its files), the scored token ids (their sha256, also in the records), window, stride,
scoring protocol, the reference backend, its options, threads, device, dtype and library versions, and
this module's storage format. The same reference evaluated again, by the next run or another case, finds
its entry; anything different makes a new one.

An entry is written in a staging directory next to it and published whole under the cache's build lock
(bench/core/cache.py), so a reader never sees half of one; a reader holds the entry's shared lock while it
reads. The section is kept under a size limit, `BENCH_LOGPROBS_CACHE_GB` (default 10 GB, enough for two
nightly references of a 128k-vocabulary model over 8192 tokens): after each new entry the least recently
used others are evicted (never one being read). `python -m bench cache` lists, prunes and clears them.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.core.cache import (
    build_dir_atomically,
    cache_dir,
    entries,
    evict_lru,
    remove_abandoned,
    shared_lock,
    staging_dir,
    touch,
    tree_digest,
)
from bench.errors import BadInput

SECTION = "logprobs"
LIMIT_VARIABLE = "BENCH_LOGPROBS_CACHE_GB"
DEFAULT_LIMIT_GB = 10.0
STORAGE_FORMAT = 1  # change it when what an entry holds changes: old entries are then never read
META = "meta.json"
DTYPE = np.dtype("<f4")


def section() -> Path:
    return cache_dir() / SECTION


def limit_bytes() -> int:
    """The section's size limit in bytes: $BENCH_LOGPROBS_CACHE_GB, else DEFAULT_LIMIT_GB."""
    text = os.environ.get(LIMIT_VARIABLE, "").strip()
    if not text:
        return int(DEFAULT_LIMIT_GB * 1e9)
    try:
        gb = float(text)
    except ValueError:
        gb = -1.0
    if not gb >= 0 or gb == float("inf"):
        raise BadInput(f"{LIMIT_VARIABLE}={text!r}: give the size limit of the reference log-probabilities' cache "
                       f"in GB, a number >= 0 (default {DEFAULT_LIMIT_GB:g})")
    return int(gb * 1e9)


def entry_path(key: str) -> Path:
    return section() / key


def is_complete(path: Path) -> bool:
    return (path / META).is_file()


BUILD_NOTES = ("bench_model.json",)  # how bench built a model (its build time, ...): not read by any backend


def model_digest(model_path: str) -> str:
    """What identifies the model: a hash of its files' bytes (bench's build notes aside, so two machines that
    built the same model agree), or its name when it is not a local path."""
    path = Path(model_path)
    return f"files:{tree_digest(path, ignore=BUILD_NOTES)}" if path.exists() else f"name:{model_path}"


def reference_key(parts: dict[str, Any]) -> str:
    """The entry's key: 24 hex digits of sha256 over `parts` (canonical JSON) and the storage format."""
    canonical = json.dumps({**parts, "storage_format": STORAGE_FORMAT}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:24]


def read_meta(path: Path) -> dict[str, Any]:
    return json.loads((path / META).read_text())


def _window_name(index: int) -> str:
    return f"window-{index:04d}.npy"


class EntryWriter:
    """Writes one entry's windows into a staging directory, then publishes the entry whole (`publish`)."""

    def __init__(self, key: str, parts: dict[str, Any]) -> None:
        self.key, self.parts = key, parts
        self.staging: Path | None = staging_dir(section(), key)
        self.rows: list[int] = []
        self.vocab: int | None = None
        self._left = 0

    def start_window(self, index: int, rows: int, vocab: int) -> None:
        assert self.staging is not None and self._left == 0 and index == len(self.rows)
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": DTYPE.str, "fortran_order": False,
                                                      "shape": (rows, vocab)})
        (self.staging / _window_name(index)).write_bytes(header.getvalue())
        self.rows.append(rows)
        self.vocab, self._left = vocab, rows

    def write(self, rows: np.ndarray) -> None:
        """The next rows of the current window (float32 as stored); the window ends with its last row."""
        assert self.staging is not None and len(rows) <= self._left
        with open(self.staging / _window_name(len(self.rows) - 1), "ab") as f:
            f.write(np.ascontiguousarray(rows, dtype=DTYPE).tobytes())
        self._left -= len(rows)

    def publish(self, written_by: dict[str, Any]) -> Path:
        """Make the entry visible (atomically, under its build lock), then evict others beyond the size limit.
        If another process published the same key meanwhile, its entry is kept and this one dropped."""
        assert self.staging is not None and self._left == 0
        staging = self.staging
        meta = {"key": self.key, "parts": self.parts, "windows": len(self.rows), "rows": self.rows,
                "vocab": self.vocab, "bytes": sum(r * (self.vocab or 0) for r in self.rows) * DTYPE.itemsize,
                "written_by": {**written_by, "host": socket.gethostname(), "pid": os.getpid(), "at": time.time()}}
        (staging / META).write_text(json.dumps(meta, indent=1))

        def fill(tmp: Path) -> None:
            for item in staging.iterdir():
                os.rename(item, tmp / item.name)

        target = build_dir_atomically(entry_path(self.key), fill, is_complete)
        self.discard()
        touch(target)
        evict_lru(section(), limit_bytes(), is_complete, keep=[self.key])
        remove_abandoned(section())
        return target

    def discard(self) -> None:
        """Drop what was staged (a failed case, or an entry another process published first)."""
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None


@dataclass
class StoredWindow:
    """One stored window: rows read on demand, a chunk at a time (never the whole window in memory)."""

    path: Path
    rows: int
    vocab: int
    offset: int

    def read(self, start: int, stop: int) -> np.ndarray:
        with open(self.path, "rb") as f:
            f.seek(self.offset + start * self.vocab * DTYPE.itemsize)
            data = np.fromfile(f, dtype=DTYPE, count=(stop - start) * self.vocab)
        if len(data) != (stop - start) * self.vocab:
            raise ValueError(f"{self.path}: rows {start}-{stop} are cut short (a damaged cache entry)")
        return data.reshape(stop - start, self.vocab)


class EntryReader:
    """An entry opened for reading: holds its shared lock (no eviction meanwhile) until `close`."""

    def __init__(self, key: str) -> None:
        self.path = entry_path(key)
        self._locks = contextlib.ExitStack()
        self._locks.enter_context(shared_lock(self.path))
        if not is_complete(self.path):
            self.close()
            raise FileNotFoundError(f"no complete entry {self.path}")
        touch(self.path)
        self.meta = read_meta(self.path)

    def window(self, index: int) -> StoredWindow | None:
        """Window `index`, or None past the last one."""
        if index >= self.meta["windows"]:
            return None
        path = self.path / _window_name(index)
        with open(path, "rb") as f:
            np.lib.format.read_magic(f)
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            offset = f.tell()
        if dtype != DTYPE or len(shape) != 2:
            raise ValueError(f"{path}: holds {dtype} {shape}, not float32 rows x vocabulary (a damaged cache entry)")
        return StoredWindow(path, shape[0], shape[1], offset)

    def close(self) -> None:
        self._locks.close()


def listing() -> list[dict[str, Any]]:
    """Every complete entry, least recently used first: key, bytes, last use and what it holds."""
    out = []
    for entry in entries(section(), is_complete):
        try:
            meta = read_meta(entry.path)
        except (OSError, ValueError):
            meta = {}
        out.append({"key": entry.key, "path": entry.path, "bytes": entry.size_bytes, "last_used": entry.last_used,
                    "parts": meta.get("parts", {}), "written_by": meta.get("written_by", {})})
    return out
