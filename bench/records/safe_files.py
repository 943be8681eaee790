"""Files under results/ and reports/ written without following symbolic links, and run inputs read only
from inside their run.

A run directory can come from elsewhere (a shard downloaded from CI, a colleague's results): a symbolic link
planted in it must not make bench write outside it (truncate the link's target, append a record to an
outside file) nor copy an outside file into results/. So every writer opens its file relative to a *root*
(the results or reports directory, which may itself be a link the user made): each directory below the root
is opened with O_NOFOLLOW (created when missing), the file itself with O_NOFOLLOW, and a link anywhere on
that way is refused with `UnsafePath` (exit code 2) naming it. Readers of a run use `check_inside`: a path
whose real location leaves the run directory is refused the same way.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from bench.errors import BadInput

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePath(BadInput):
    """A symbolic link (or a path) that would take a read or write outside its run or reports directory."""


def _link_message(path: Path, root: Path) -> str:
    try:
        target = f" (-> {os.readlink(path)})"
    except OSError:
        target = ""
    return (f"{path} is a symbolic link{target}: bench does not write through links under {root}; "
            f"remove the link (or copy the run without links) and try again")


def _parts(path: Path | str, root: Path | str) -> list[str]:
    """The components of `path` below `root`, lexically (no link followed); UnsafePath when it is not below."""
    relative = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
    parts = Path(relative).parts
    if not parts or relative == "." or parts[0] == "..":
        raise UnsafePath(f"{path} is not inside {root}: bench writes only under its results and reports "
                         f"directories")
    return list(parts)


@contextlib.contextmanager
def _named(path: Path) -> Iterator[None]:
    """An OSError raised for a name relative to a directory descriptor, re-raised with the whole path."""
    try:
        yield
    except OSError as exc:
        if exc.errno is None:
            raise
        raise type(exc)(exc.errno, exc.strerror, str(path)) from None


def _open_dir(name: str, dir_fd: int, shown: Path, root: Path, create: bool) -> int:
    with _named(shown):
        if create:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o755, dir_fd=dir_fd)
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(shown):
                raise UnsafePath(_link_message(shown, root)) from None
            raise


@contextlib.contextmanager
def parent_fd(path: Path | str, root: Path | str, create: bool = True) -> Iterator[tuple[int, str]]:
    """(a descriptor of `path`'s directory, reached from `root` without following a link; the file's name).
    Missing directories are created when `create`; the root itself is created (and may be a link)."""
    root = Path(root)
    parts = _parts(path, root)
    if create:
        root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    shown = root
    try:
        for name in parts[:-1]:
            shown = shown / name
            next_fd = _open_dir(name, fd, shown, root, create)
            os.close(fd)
            fd = next_fd
        yield fd, parts[-1]
    finally:
        os.close(fd)


def makedirs(path: Path | str, root: Path | str) -> Path:
    """Create the directory `path` (and its parents) under `root`, refusing a link on the way."""
    with parent_fd(Path(path) / "_", root):
        pass
    return Path(path)


def open_fd(path: Path | str, root: Path | str, flags: int, mode: int = 0o644) -> int:
    """os.open of `path` under `root` with O_NOFOLLOW on every component below the root."""
    with parent_fd(path, root) as (dir_fd, name):
        try:
            with _named(Path(path)):
                return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafePath(_link_message(Path(path), Path(root))) from None
            raise


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written (a write may be short)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


_MODES = {"w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC, "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
          "x": os.O_WRONLY | os.O_CREAT | os.O_EXCL, "r+": os.O_RDWR | os.O_CREAT}


def open_file(path: Path | str, root: Path | str, mode: str = "w", **kwargs: Any) -> IO:
    """open(path, mode) for writing ('w', 'a', 'x', 'r+', each with 'b' or not) without following a link."""
    flags = _MODES[mode.replace("b", "")]
    return os.fdopen(open_fd(path, root, flags), mode.replace("x", "w"), **kwargs)


def write_bytes(path: Path | str, root: Path | str, data: bytes, replace: bool = True) -> Path:
    """`data` at `path`, whole or not at all: a temp file next to it (O_EXCL, no link followed), fsync, rename.
    A link at `path` itself is refused too (a rename would replace it, but it says the run was tampered with).
    With replace=False an existing file is never replaced: FileExistsError instead (the temp file is published
    with link(2), which fails when the name exists, so a file made meanwhile by another process is kept)."""
    path = Path(path)
    with parent_fd(path, root) as (dir_fd, name), _named(path):
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                raise UnsafePath(_link_message(path, Path(root)))
        tmp = f".{name}.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dir_fd)
        try:
            try:
                write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            if replace:
                os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            else:
                _publish_new(tmp, name, dir_fd, data)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=dir_fd)
    return path


def _publish_new(tmp: str, name: str, dir_fd: int, data: bytes) -> None:
    """The temp file under `name` only if nothing has that name (FileExistsError otherwise). A file system without
    hard links gets the file written in place, created with O_EXCL: never over another file, not atomic."""
    try:
        os.link(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK):
            raise
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dir_fd)
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)


def write_text(path: Path | str, root: Path | str, text: str, replace: bool = True) -> Path:
    return write_bytes(path, root, text.encode("utf-8"), replace)


def write_json(path: Path | str, root: Path | str, data: Any) -> Path:
    return write_bytes(path, root, json.dumps(data, indent=1).encode("utf-8"))


def check_inside(path: Path | str, run_dir: Path | str) -> Path:
    """`path` when its real location (links resolved) is inside `run_dir`'s; UnsafePath naming the link if not."""
    path, run_dir = Path(path), Path(run_dir)
    real, home = path.resolve(), run_dir.resolve()
    if real == home or home in real.parents:
        return path
    link = next((p for p in [*reversed(path.parents), path] if p.is_symlink()), path)
    try:
        target = f" (-> {os.readlink(link)})"
    except OSError:
        target = ""
    raise UnsafePath(f"{link} is a symbolic link{target} that leaves the run directory {run_dir}: bench reads a "
                     f"run only from inside it; remove the link")


def read_bytes(path: Path | str, run_dir: Path | str) -> bytes:
    """The bytes of a file of a run, refused (UnsafePath) when a link takes it outside the run directory."""
    return Path(check_inside(path, run_dir)).read_bytes()
