"""On-disk cache for built models and corpora: location, atomic builds, cross-process lock."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path


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
    then finds the directory complete. Returns `target`.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.with_name(target.name + ".lock")):
        if is_complete(target) and not force:
            return target
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
