"""On-disk cache for built models, exports and environments: location, atomic builds, cross-process lock.

Entries are directories built in a temp dir next to their final name and renamed into place while
holding an `fcntl` lock on `<name>.lock`, so concurrent processes on one machine wait for one build
and never see a half-written entry. `fcntl` locks are per host: on a shared network filesystem give
each node its own `BENCH_CACHE` (or pre-build the cache once before fanning out).

A section of the cache whose entries can always be made again (the reference log-probabilities,
bench/measure/refcache.py) is kept under a size limit: `entries` lists its complete entries with their
size and last use (the entry directory's mtime, set by `touch` on every use), and `evict_lru` removes the
least recently used ones until the section fits. A reader holds `shared_lock` on the entry's lock file
while it reads, and eviction skips an entry that is locked (being read or built), so nothing is removed
from under a reader.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path


def write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """Create `path` whole or not at all: `write(tmp)` fills a temp file next to it, then fsync and rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: Path, data) -> None:
    """`data` as JSON at `path`, written atomically (see write_atomic)."""
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1)))


def cache_dir() -> Path:
    """Root of the cache: $BENCH_CACHE if set, else ~/.cache/bench."""
    env = os.environ.get("BENCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "bench"


def files_digest(paths: Iterable[Path], *parts: str) -> str:
    """16 hex digits of sha256 over each file's name and bytes, then `parts` (a cache key)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).name.encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    for part in parts:
        digest.update(b"\0" + part.encode())
    return digest.hexdigest()[:16]


def tree_digest(path: Path, ignore: Iterable[str] = ()) -> str:
    """32 hex digits of sha256 over every regular file under `path` (or the file itself) but those named in
    `ignore`: its path relative to `path`, then its bytes, in sorted order. What a model is, whatever its
    directory is called or when it was copied."""
    path, ignored = Path(path), set(ignore)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and p.name not in ignored)
    digest = hashlib.sha256()
    for file in files:
        digest.update((file.relative_to(path).as_posix() if file != path else "").encode() + b"\0")
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()[:32]


def lock_path(entry: Path) -> Path:
    """The lock file of a cache entry (what build_dir_atomically holds while it builds the entry)."""
    return entry.with_name(entry.name + ".lock")


@contextlib.contextmanager
def file_lock(path: Path, shared: bool = False) -> Iterator[None]:
    """Exclusive (or shared) fcntl lock on `path` (created if missing); blocks until acquired."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_dir_atomically(
    target: Path,
    fill: Callable[[Path], None],
    is_complete: Callable[[Path], bool],
    force: bool = False,
) -> Path:
    """Make `target` by calling `fill(tmp)` on a temp dir next to it, then renaming.

    Holds a lock next to `target` so a second process waits for the first and
    then finds the directory complete. Returns `target`. A build that was killed (Ctrl-C during native code,
    kill -9) leaves its temp dir behind: the next build of `target` removes it.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(lock_path(target)):
        if is_complete(target) and not force:
            return target
        _remove_leftovers(target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        try:
            fill(tmp)
            if target.exists():  # stale or forced: move it aside, then drop it
                old = target.with_name(f".{target.name}.old-{os.getpid()}")
                os.rename(target, old)
                shutil.rmtree(old)
            os.rename(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _remove_leftovers(target: Path) -> None:
    """Temp dirs of earlier builds of `target` that were killed: only a holder of its lock makes them, and the
    caller holds it now."""
    # the names build_dir_atomically gives them: mkdtemp's 8 random characters, or a replaced entry's ".old-PID"
    made_here = re.compile(rf"\.{re.escape(target.name)}\.(?:[a-z0-9_]{{8}}|old-\d+)")
    for leftover in target.parent.glob(f".{glob.escape(target.name)}.*"):
        if made_here.fullmatch(leftover.name) and leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)


# ---------------------------------------------------------------- size-limited sections (least recently used goes)

def shared_lock(entry: Path) -> contextlib.AbstractContextManager[None]:
    """A shared lock on the entry's lock file: waits while the entry is being built, and keeps `evict_lru` from
    removing it while it is read."""
    return file_lock(lock_path(entry), shared=True)


def dir_size(path: Path) -> int:
    """Bytes of the regular files under `path` (apparent size), 0 if it is gone."""
    total = 0
    for root, _, names in os.walk(path):
        for name in names:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def touch(entry: Path) -> None:
    """Mark a cache entry as used now (its directory's mtime is its last use)."""
    with contextlib.suppress(OSError):
        os.utime(entry)


@dataclass(frozen=True)
class CacheEntry:
    path: Path
    size_bytes: int
    last_used: float  # seconds since the epoch

    @property
    def key(self) -> str:
        return self.path.name


def entries(section: Path, is_complete: Callable[[Path], bool]) -> list[CacheEntry]:
    """The complete entries of a cache section, least recently used first (temp and aside dirs start with '.')."""
    found = []
    for path in sorted(section.iterdir()) if section.is_dir() else []:
        if path.name.startswith(".") or not path.is_dir() or not is_complete(path):
            continue
        with contextlib.suppress(OSError):
            found.append(CacheEntry(path, dir_size(path), path.stat().st_mtime))
    return sorted(found, key=lambda e: (e.last_used, e.key))


def remove_entry(entry: Path) -> bool:
    """Remove a cache entry unless it is locked (read or being built); True when it was removed."""
    with open(lock_path(entry), "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        try:
            aside = entry.with_name(f".{entry.name}.removing-{os.getpid()}")
            try:
                os.rename(entry, aside)  # gone at once for readers; the bytes go next
            except FileNotFoundError:
                return False
            shutil.rmtree(aside, ignore_errors=True)
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
    return True  # the lock file stays: another process may be waiting on it


def evict_lru(section: Path, max_bytes: int, is_complete: Callable[[Path], bool],
              keep: Iterable[str] = ()) -> list[CacheEntry]:
    """Remove the least recently used entries of `section` until its complete entries total at most `max_bytes`;
    never those named in `keep` nor one being read. Returns what was removed."""
    kept = set(keep)
    found = entries(section, is_complete)
    total = sum(e.size_bytes for e in found)
    removed = []
    for entry in found:
        if total <= max_bytes:
            break
        if entry.key not in kept and remove_entry(entry.path):
            removed.append(entry)
            total -= entry.size_bytes
    return removed


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def staging_dir(section: Path, key: str) -> Path:
    """A new hidden directory in `section` where one process writes an entry before publishing it (its pid in
    the name: `remove_abandoned` takes what a killed writer left)."""
    section.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{key}.staging-{os.getpid()}-", dir=section))


def remove_abandoned(section: Path) -> int:
    """Remove staging and aside directories whose process is gone (a writer killed mid-way); bytes freed."""
    freed = 0
    for path in section.iterdir() if section.is_dir() else []:
        if not (path.name.startswith(".") and path.is_dir()):
            continue
        marker = path.name.rsplit(".staging-", 1)[-1] if ".staging-" in path.name else \
            path.name.rsplit(".removing-", 1)[-1] if ".removing-" in path.name else None
        pid = marker.split("-", 1)[0] if marker else ""
        if not pid.isdigit() or pid_alive(int(pid)):
            continue
        freed += dir_size(path)
        shutil.rmtree(path, ignore_errors=True)
    return freed
