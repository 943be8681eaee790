"""Where a command may write a file the user names (`export -o`, `compare --json/--markdown`, `site -o`,
`history record --db`, and the run and report directories of `run`, `merge` and `report`): never into a run,
never over a file bench did not write.

1. Nothing goes inside a run: a path is refused (exit 2, naming the run) when a directory above it holds
   `run.json` or `cases.jsonl` (a run directory, wherever it is), or when it lies in a folder of the results or
   reports directory the command uses (`results/<run>/...`, `reports/<run>/...`: a run, a half-made one, or a
   run's reports). The path is checked as given and at its real location, symbolic links resolved, so a link
   into a run is refused too.
2. An existing file is replaced only when it is empty, when it is this command's own earlier output (recognised
   by how it begins: `signature`), or with `--force`; atomically and never through a link at the file itself
   (bench/records/safe_files.py). A file that appears between the check and the write is kept.
3. `--append` (compare --markdown, e.g. to $GITHUB_STEP_SUMMARY) adds to the end of a file and never replaces
   one, so it needs no --force (and --force changes nothing); rule 1 still applies.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from bench.errors import BadInput
from bench.records import safe_files

RUN_FILES = ("run.json", "cases.jsonl")  # a directory holding either is a run (or what is left of one)
HEAD_BYTES = 4096  # how much of an existing file is read to recognise the command's own output
SITE_MARKER = ".bench-site"  # written into a directory `bench site` built, so the next build may replace it


class OutputRefused(BadInput):
    """An output path inside a run, or over a file bench did not write: exit code 2."""


def _places(path: Path) -> list[Path]:
    """The path's real location (links resolved: what a message names first) and the path as given (made
    absolute, `..` taken lexically)."""
    given = Path(os.path.abspath(path))
    real = Path(os.path.realpath(path))
    return [real] if given == real else [real, given]


def _run_above(place: Path) -> Path | None:
    """The nearest directory at or above `place` that holds a run's files, else None."""
    for directory in [place, *place.parents]:
        if any(os.path.lexists(directory / name) for name in RUN_FILES):
            return directory
    return None


def _in_run_folder(place: Path, what: str, root: Path, is_dir: bool) -> str | None:
    """Why `place` lies in a folder of the results or reports directory `root` (`what`), or None. A directory
    output may not be the directory itself nor any folder of it either: its files would lie in a run's folder."""
    for base in dict.fromkeys([Path(os.path.abspath(root)), Path(os.path.realpath(root))]):
        if place == base and is_dir:
            return f"it is the {what} directory {root}"
        if base in place.parents and (is_dir or len(place.relative_to(base).parts) >= 2):
            return f"{base / place.relative_to(base).parts[0]} is a run's folder in the {what} directory {root}"
    return None


def inside_run(path: Path | str, results: Path | str | None = None, reports: Path | str | None = None,
               is_dir: bool = False) -> str | None:
    """Why `path` (a file, or a directory when `is_dir`) lies inside a run or a run's reports, or None."""
    roots = [(name, Path(root)) for name, root in (("results", results), ("reports", reports)) if root is not None]
    for place in _places(Path(path)):
        run = _run_above(place)
        if run is not None:
            return f"{run} is a run directory (it holds {' or '.join(RUN_FILES)})"
        for what, root in roots:
            why = _in_run_folder(place, what, root, is_dir)
            if why:
                return why
    return None


def check(path: Path | str, option: str, results: Path | str | None = None, reports: Path | str | None = None,
          is_dir: bool = False) -> Path:
    """`path` when a command may write there (rule 1 of the module docstring); OutputRefused naming the run if not."""
    why = inside_run(path, results, reports, is_dir)
    if why:
        raise OutputRefused(f"{option} {path}: {why}; a command's output never goes into a run, where it could "
                            f"replace the run's own files: give a path outside the results/<run>/ and "
                            f"reports/<run>/ folders")
    return Path(path)


def check_run_places(results: Path | str, reports: Path | str, run_id: str) -> None:
    """A run's directory (results/<run_id>, new: `run`, `merge`) and its reports folder (reports/<run_id>): neither
    inside another run, and not one folder (a report written into the run it reports on)."""
    check(results, "--results-dir", is_dir=True)
    check_reports(reports, run_id)
    if Path(os.path.realpath(results)) == Path(os.path.realpath(reports)):
        raise OutputRefused(f"--reports-dir {reports} is the results directory {results}: each run's report would "
                            f"be written into the run itself; give them different directories")


def check_reports(reports: Path | str, run_id: str) -> Path:
    """The folder a run's reports go to (reports/<run_id>), when it is not inside a run (rule 1)."""
    return check(Path(reports) / run_id, "--reports-dir", is_dir=True)


def _head(path: Path) -> bytes | None:
    """The first bytes of the file at `path` (None when nothing is there); a link or a non-file is refused."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise OutputRefused(f"cannot write {path}: {exc.strerror}") from None
    if path.is_symlink():
        raise OutputRefused(f"{path} is a symbolic link: bench writes a command's output only to a plain file; "
                            f"give the path of the file itself")
    if not path.is_file():
        raise OutputRefused(f"{path} exists and is not a file (a directory?); give the path of a file")
    if info.st_size == 0:
        return b""
    with open(path, "rb") as f:
        return f.read(HEAD_BYTES)


def check_file(path: Path | str, option: str, *, signature: bytes, force: bool = False,
               results: Path | str | None = None, reports: Path | str | None = None) -> bool:
    """Whether a file is at `path` (True: `write` will replace it), refusing what rules 1 and 2 refuse: a command
    checks its output paths with it before doing its work. `signature`: a regular expression (bytes) matching the
    start of what this command writes there, by which its own earlier output is recognised."""
    path = check(path, option, results, reports)
    head = _head(Path(path))
    if head and not force and not re.match(signature, head):
        raise OutputRefused(f"{option} {path}: the file exists and is not output of this command; bench does not "
                            f"replace it: give another path, or add --force to replace it")
    return head is not None


def write(path: Path | str, data: bytes | str, option: str, *, signature: bytes, force: bool = False,
          results: Path | str | None = None, reports: Path | str | None = None) -> Path:
    """`data` at `path` under the module's rules (see check_file)."""
    path = Path(path)
    data = data.encode("utf-8") if isinstance(data, str) else data
    for _ in range(2):  # a second look only when a file appeared between the first look and the write
        replace = check_file(path, option, signature=signature, force=force, results=results, reports=reports)
        try:
            return safe_files.write_bytes(path, path.parent, data, replace=replace)
        except FileExistsError:
            continue
        except OSError as exc:
            raise OutputRefused(f"{option} {path}: cannot write: {exc.strerror or exc}") from None
    raise OutputRefused(f"{option} {path}: another process keeps creating this file; give another path")


def append(path: Path | str, text: str, option: str, results: Path | str | None = None,
           reports: Path | str | None = None) -> Path:
    """`text` added at the end of the file at `path` (created when missing): rule 1 applies, nothing is replaced."""
    path = check(path, option, results, reports)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)
    except OSError as exc:
        raise OutputRefused(f"{option} {path}: cannot write: {exc.strerror or exc}") from None
    return path


def check_directory(out: Path | str, option: str, *, force: bool = False, results: Path | str | None = None,
                    reports: Path | str | None = None) -> Path:
    """An output directory (`site -o`): not in a run, not a results or reports directory nor holding one, and
    either missing, empty, one bench built before (it holds SITE_MARKER), or `force` given."""
    out = check(out, option, results, reports, is_dir=True)
    for what, root in (("results", results), ("reports", reports)):
        if root is not None and Path(os.path.realpath(out)) in Path(os.path.realpath(root)).parents:
            raise OutputRefused(f"{option} {out}: it holds the {what} directory {root}; the site's files would mix "
                                f"with the runs': give a directory of its own")
    if out.exists() and not out.is_dir():
        raise OutputRefused(f"{option} {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / SITE_MARKER).is_file() and not force:
        raise OutputRefused(f"{option} {out}: a directory that bench did not build (no {SITE_MARKER} in it) and "
                            f"not empty; bench does not write its files into it: give a new or empty directory, or "
                            f"add --force to write there (files of the same names are replaced)")
    return out
