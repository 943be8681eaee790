"""The dashboard's cache on disk (docs/dashboard.md): JSON entries named by a content key, under
`<BENCH_CACHE>/site/` (bench.core.cache.cache_dir(); `bench site --cache DIR` elsewhere, `--no-cache` for none).

Two kinds, each in its own folder: `verdicts/` (a consecutive pair's gate result, bench/site/verdict_cache.py)
and `runs/` (what the pages need of one run, bench/site/gather.py). An entry is written whole (a temp file of
the writing process renamed into place), so builds running at once never read half an entry and the last writer
of a key writes what the first did; it is not fsynced (a cache: an entry a crash left torn reads as unreadable).
An entry that cannot be read (truncated, not JSON, another key or format) is recomputed and rewritten, with a
warning; a hit refreshes the entry's time, and beyond `MAX_ENTRIES` per folder the least recently used are removed.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.core.cache import cache_dir

MAX_ENTRIES = 8192  # per folder: a verdict per night and a run per night for years


def default_dir() -> Path:
    return cache_dir() / "site"


@dataclass
class Stats:
    hits: int = 0
    misses: int = 0  # no entry, or a stale one: computed
    corrupt: int = 0  # an entry that could not be read: computed again


class Store:
    """Entries of one kind under `root / kind`; `root` None: no cache (every read misses, writes are dropped)."""

    def __init__(self, root: Path | None, kind: str, format_: int) -> None:
        self.dir = Path(root) / kind if root is not None else None
        self.kind = kind
        self.format = format_
        self.stats = Stats()
        self._unwritable = False

    def path(self, key: str) -> Path:
        assert self.dir is not None
        return self.dir / f"{key}.json"

    def read(self, key: str) -> dict | None:
        """The payload stored under `key`, or None (none, or unreadable: counted and warned about)."""
        if self.dir is None:
            return None
        path = self.path(key)
        try:
            raw = json.loads(path.read_bytes())
            if not isinstance(raw, dict) or raw.get("format") != self.format or raw.get("key") != key:
                raise ValueError(f"not a {self.kind} entry of this key and format {self.format}")
            payload = raw["payload"]
            if not isinstance(payload, dict):
                raise TypeError("its payload is not an object")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
            self.corrupt(path, exc)
            return None
        try:
            os.utime(path)  # recently used: kept by prune()
        except OSError:
            pass
        return payload

    def corrupt(self, path: Path, exc: Exception) -> None:
        """An entry found unreadable (here, or by its reader): warned about once, then computed again."""
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        print(f"warning: {self.kind} cache entry {path} cannot be read ({reason}): computed again", file=sys.stderr)
        self.stats.corrupt += 1

    def write(self, key: str, payload: dict) -> None:
        if self.dir is None or self._unwritable:
            return
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp = self.dir / f".{key}.{os.getpid()}.tmp"
            try:
                tmp.write_text(json.dumps({"format": self.format, "key": key, "payload": payload},
                                          separators=(",", ":")))
                os.replace(tmp, self.path(key))
            finally:
                tmp.unlink(missing_ok=True)
        except OSError as exc:
            self._unwritable = True
            print(f"warning: cannot write the dashboard's cache under {self.dir} ({exc.strerror or exc}): "
                  f"nothing is kept for the next build", file=sys.stderr)

    def prune(self, keep: int = MAX_ENTRIES) -> int:
        """Remove the least recently used entries beyond `keep`; returns how many were removed."""
        if self.dir is None or not self.dir.is_dir():
            return 0
        entries = []
        for entry in os.scandir(self.dir):
            if entry.name.startswith("."):  # another build's entry being written
                continue
            try:
                entries.append((entry.stat().st_mtime, entry.path))
            except OSError:
                continue
        removed = 0
        for _, path in sorted(entries, reverse=True)[keep:]:
            try:
                os.unlink(path)
                removed += 1
            except OSError:
                pass
        return removed
