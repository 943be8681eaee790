"""`bench merge RUN... --run-id NEW`: runs of one suite (the shards of `bench run --shard I/N`) as one run.

Refused, before anything is written: runs of different suites (their suite.yaml hashes in run.json differ,
or a run has none), runs that share a case (a case id with records in two of them), a file two runs both
have with different contents, a run being written (its lock is held), and a NEW run that exists. Kept:
every record line of every run, verbatim and in run order (retried cases' earlier lines too), every
sample, log, trace and case file (and the `reference/` folder of runs made when the reference's
log-probabilities were kept in the run; they are in bench's cache now, named by the records). run.json:
the first run's metadata with the new id, `merged_from`, and the whole suite's case list when the runs are
shards (a shard that was not merged shows its cases as missing in the report), else the runs' case lists
one after another.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

from bench.errors import BadInput
from bench.records import safe_files
from bench.records.rundir import RunDir
from bench.records.schema import RunMeta

FOLDERS = ("samples", "logs", "traces", "cases", "reference")  # reference/: only in runs made before it left them


def _files(run: RunDir) -> dict[str, Path]:
    """The run's files in FOLDERS by relative name; a link that leaves the run is refused (safe_files)."""
    found: dict[str, Path] = {}
    for folder in FOLDERS:
        top = run.path / folder
        if not (top.is_dir() or top.is_symlink()):
            continue
        safe_files.check_inside(top, run.path)
        for p in sorted(top.rglob("*")):
            safe_files.check_inside(p, run.path)
            if p.is_file():
                found[p.relative_to(run.path).as_posix()] = p
    return found


def _record_lines(run: RunDir) -> list[str]:
    """Complete record lines, verbatim (a torn last line was already set aside by the writer lock); a line that is
    not a JSON object is refused, naming the file and line, before anything is written."""
    lines = []
    for n, line in enumerate(run._cases_bytes().decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            if not isinstance(json.loads(line), dict):
                raise TypeError("not a JSON object")
        except (ValueError, TypeError, RecursionError) as exc:
            raise BadInput(f"merge: {run.cases_path}:{n}: not a whole record ({exc}); repair or remove that line "
                           f"and merge again") from None
        lines.append(line)
    return lines


def _check(sources: list[RunDir], metas: list[RunMeta]) -> None:
    first = metas[0].suite_sha256 or ""
    for run, meta in zip(sources, metas, strict=True):
        if not meta.suite_sha256:
            raise BadInput(f"merge: run '{run.run_id}' has no suite hash in run.json (format 1): cannot tell its suite")
        if meta.suite_sha256 != first:
            raise BadInput(f"merge: runs '{sources[0].run_id}' and '{run.run_id}' ran different suites (suite.yaml "
                           f"hashes {first[:12]} and {meta.suite_sha256[:12]}); merge only the shards "
                           f"of one suite")
    owner: dict[str, str] = {}
    for run in sources:
        for record in run.records():
            if owner.setdefault(record.id, run.run_id) != run.run_id:
                raise BadInput(f"merge: case {record.id} has records in both '{owner[record.id]}' and '{run.run_id}': "
                               f"runs to merge must not overlap")
    seen: dict[str, Path] = {}
    for run in sources:
        for name, path in _files(run).items():
            if name in seen and seen[name].read_bytes() != path.read_bytes():
                raise BadInput(f"merge: {name} differs between {seen[name]} and {path}")
            seen.setdefault(name, path)


def _case_ids(metas: list[RunMeta]) -> list[str]:
    shards = {tuple(m.shard.suite_case_ids) for m in metas if m.shard is not None}
    if len(shards) == 1 and all(m.shard is not None for m in metas):
        return list(shards.pop())
    return list(dict.fromkeys(case_id for m in metas for case_id in m.case_ids))


def merge_runs(sources: list[RunDir], target: RunDir) -> RunMeta:
    """Merge `sources` into the new run `target` (see the module docstring); returns its metadata.

    Atomic: the merged run is built in a hidden directory next to the target and renamed into place, so a
    failure leaves no half-made run behind."""
    if len({run.path.resolve() for run in sources}) != len(sources):
        raise BadInput("merge: a run is named twice")
    if target.exists() or target.path.exists() or target.path.is_symlink():
        raise BadInput(f"merge: {target.half_made() or f'run {target.run_id!r} already exists in {target.root}'}")
    with contextlib.ExitStack() as locks:
        for run in sources:
            locks.enter_context(run.writer())  # refused while a run is being written; repairs a torn tail
        metas = [run.meta() for run in sources]
        _check(sources, metas)
        lines = [line for run in sources for line in _record_lines(run)]
        meta = metas[0].model_copy(update={
            "run_id": target.run_id, "created_at": time.time(), "case_ids": _case_ids(metas), "shard": None,
            "merged_from": [run.run_id for run in sources], "command": sys.argv, "cwd": os.getcwd()})
        target.root.mkdir(parents=True, exist_ok=True)
        building = RunDir(target.root, f".{target.run_id}.merging-{os.getpid()}")
        shutil.rmtree(building.path, ignore_errors=True)
        try:
            building.create(meta.model_copy(), safe_files.read_bytes(sources[0].suite_snapshot, sources[0].path))
            for run in sources:
                for name, path in _files(run).items():
                    destination = building.path / name
                    if not destination.exists():
                        safe_files.write_bytes(destination, building.root, path.read_bytes())
            safe_files.write_text(building.cases_path, building.root, "".join(line + "\n" for line in lines))
            try:
                os.rename(building.path, target.path)
            except OSError as exc:
                raise BadInput(f"merge: cannot move the merged run into {target.path}: {exc.strerror}") from None
        finally:
            shutil.rmtree(building.path, ignore_errors=True)
    return meta
