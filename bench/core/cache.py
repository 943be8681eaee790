"""On-disk cache for built models, exports and environments: location, atomic builds, cross-process lock.

Entries are directories built in a temp dir next to their final name and renamed into place while
holding an `fcntl` lock on `<name>.lock`, so concurrent processes on one machine wait for one build
and never see a half-written entry. `fcntl` locks are per host: on a shared network filesystem give
each node its own `BENCH_CACHE` (or pre-build the cache once before fanning out).
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


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive fcntl lock on `path` (created if missing); blocks until acquired."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
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
    with file_lock(target.with_name(target.name + ".lock")):
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
