"""The run directory, results/<run-id>/, and the one loader every reader uses.

    run.json          RunMeta: format version, environment fingerprint, the planned case ids
    suite.yaml        the suite file as it was when the run started (what --resume runs)
    cases.jsonl       one CaseRecord per line, per finished case (ok, failed or skipped)
    samples/<id>.json RawSamples of a latency case, written (tmp + rename) before its line is appended
    cases/<id>.json   the CaseSpec handed to its worker process
    logs/<id>.log     the worker's stdout and stderr
    traces/<id>/      profiler output of a profiled case (TensorBoard logdir: traces/)
    .lock             held by the one process writing this run (`RunDir.writer`)

The reference variant's log-probabilities, which quality is computed from, are not here: they are an entry
of bench's cache (bench/measure/refcache.py) that the reference's record names, computed again when a case
needs them and the cache no longer has them (bench/run/reference.py). A run made before that has them in
`reference/`; nothing reads it any more.

A case counts as finished only once its line is in cases.jsonl, so a run killed at any moment loses
at most the case in flight, and `--resume` redoes nothing that finished. A line torn by a kill in
mid-write is cut off (and kept aside) before the next writer appends.

`load_run` reads a run of any format (bench/records/upgrade.py) into typed records: report, HTML,
compare, export and history all read through it, and none needs the suite's backends to exist.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from pydantic import ValidationError

from bench.errors import BadInput
from bench.records import safe_files, upgrade
from bench.records.schema import FORMAT_VERSION, CaseRecord, CaseSpec, RawSamples, RegressionSettings, RunMeta

_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=+-]{0,127}")


class RunError(BadInput):
    """A run that cannot be found, read or written; str() is the message shown (exit code 2)."""


class RunLocked(RunError):
    """Another process is writing this run."""


def check_plain_name(name: str, what: str) -> str:
    """A run id or suite name must be a plain file name: no '/', no '..', not absolute, not empty."""
    if not _PLAIN_NAME.fullmatch(name or "") or ".." in name:
        raise RunError(f"{what} {name!r} is not a plain name: use letters, digits and . _ = + - (at most 128, "
                       f"starting with a letter or digit, no '/' or '..'), so the run stays inside its results "
                       f"and reports directories")
    return name


def new_run_id(suite_name: str) -> str:
    return f"{suite_name}-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}"


class RunDir:
    """Paths of one run directory and the operations that keep it intact."""

    def __init__(self, root: Path | str, run_id: str) -> None:
        self.root = Path(root)
        self.run_id = run_id
        self.path = self.root / run_id
        self._held: int | None = None  # the write lock's descriptor, while `create(hold=True)` keeps it for writer()

    # ------------------------------------------------------------ paths

    @property
    def meta_path(self) -> Path:
        return self.path / "run.json"

    @property
    def suite_snapshot(self) -> Path:
        return self.path / "suite.yaml"

    @property
    def cases_path(self) -> Path:
        return self.path / "cases.jsonl"

    @property
    def lock_path(self) -> Path:
        return self.path / ".lock"

    def samples_path(self, case_id: str) -> Path:
        return self.path / "samples" / f"{case_id}.json"

    def case_path(self, case_id: str) -> Path:
        return self.path / "cases" / f"{case_id}.json"

    def log_path(self, case_id: str) -> Path:
        return self.path / "logs" / f"{case_id}.log"

    def trace_dir(self, case_id: str) -> Path:
        return self.path / "traces" / case_id

    def exists(self) -> bool:
        return self.meta_path.is_file()

    def half_made(self) -> str | None:
        """Why the run directory exists but is not a run (no run.json, or no suite.yaml to resume), with the
        command that removes it; None when it is a run or is not there at all. An incomplete directory whose lock
        another process holds is that process's, never something to remove: then the message names the holder."""
        if not (self.path.exists() or self.path.is_symlink()):
            return None
        remove = f"nothing was measured in it: remove it with `rm -r {self.path}` and run again"
        if not self.path.is_dir() or self.path.is_symlink():
            return f"{self.path} is not a run directory; {remove}"
        if not self.meta_path.exists():
            why = f"{self.path} has no run.json (a run stopped before it started, or a failed merge): {remove}"
        elif not self.suite_snapshot.is_file() and not self.cases_path.exists():
            why = f"{self.suite_snapshot} is missing (a run stopped while it was being created): {remove}"
        else:
            return None
        holder = self.writer_now()
        return self.held(holder) if holder else why

    def held(self, holder: str) -> str:
        """The message for a run another process holds (is creating or writing)."""
        return (f"run '{self.run_id}' in {self.root} is held by another run, {holder}: it is still being created or "
                f"written; choose another --run-id, or wait for it to finish")

    def taken(self) -> str | None:
        """Why a new run cannot be made here: another process holds this run, it is half made, or it exists."""
        reason = self.half_made()
        if reason is None and self.exists():
            holder = self.writer_now()
            reason = self.held(holder) if holder else \
                f"run '{self.run_id}' already exists in {self.root}; use --resume {self.run_id}"
        return reason

    def require(self, what: str) -> RunDir:
        """This run, for `what` (e.g. '--resume'); RunError when it is missing or half made."""
        reason = self.half_made()
        if reason:
            raise RunError(f"{what}: {reason}")
        if not self.exists():
            raise RunError(f"{what}: no run '{self.run_id}' in {self.root}")
        return self

    # ------------------------------------------------------------ writing

    def create(self, meta: RunMeta, snapshot: bytes | None = None, hold: bool = False) -> None:
        """Make the run directory, whole or not at all: it is built in a hidden directory next to it (its write lock
        taken first, then the suite snapshot when given, then run.json) and renamed into place, so no other process
        ever sees a run directory being made. When two processes create the same run at once, one rename wins and
        the other says that a run holds it. `hold`: keep the write lock for this process's `writer()` (what `bench
        run` does, so no other writer gets in between creating the run and running its cases)."""
        building = RunDir(self.root, f".{self.run_id}.creating-{os.getpid()}")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            taken = self.taken()
            if taken:
                raise RunError(taken)
            shutil.rmtree(building.path, ignore_errors=True)
            os.mkdir(building.path)
        except OSError as exc:
            raise RunError(f"cannot create {self.path}: {exc.strerror}") from None
        fd = None
        try:
            fd = building._lock()
            if snapshot is not None:
                safe_files.write_bytes(building.suite_snapshot, building.root, snapshot)
            safe_files.write_json(building.meta_path, building.root, meta.model_dump(mode="json"))
            try:
                os.rename(building.path, self.path)  # fails when the name exists (a non-empty directory, a file)
            except OSError as exc:
                if not (self.path.exists() or self.path.is_symlink()):
                    raise RunError(f"cannot create {self.path}: {exc.strerror}") from None
                raise RunError(self.taken() or f"run '{self.run_id}' already exists in {self.root}") from None
            if hold:
                self._held, fd = fd, None
        finally:
            if fd is not None:
                os.close(fd)
            shutil.rmtree(building.path, ignore_errors=True)

    def _lock(self) -> int:
        """The write lock taken (a descriptor of .lock, flock'ed, naming this process), or RunLocked."""
        fd = safe_files.open_fd(self.lock_path, self.root, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunLocked(f"run '{self.run_id}' is being written by {holder}; wait for it to finish, "
                            f"or stop it first") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        safe_files.write_all(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                                 f"{time.strftime('%Y-%m-%d %H:%M:%S')} ({' '.join(sys.argv)})".encode())
        return fd

    @contextlib.contextmanager
    def writer(self) -> Iterator[None]:
        """Hold the run's write lock for the block: one writer per run, a second one fails at once.

        The lock is an fcntl lock on .lock, released by the kernel when its holder dies (even by kill -9),
        so a stale lock cannot outlive its process. The file names the holder for the error message. A lock
        kept by `create(hold=True)` is taken over, not taken again."""
        fd, self._held = (self._held, None) if self._held is not None else (self._lock(), None)
        try:
            self.repair_tail()
            yield
        finally:
            os.close(fd)  # releases the lock

    def writer_now(self) -> str | None:
        """Who is writing this run right now (the lock's holder), or None when nobody is."""
        try:
            fd = os.open(self.lock_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None  # no lock file: never written by a writer that is alive
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return None
        except BlockingIOError:
            return os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
        finally:
            os.close(fd)

    def repair_tail(self) -> None:
        """Cut a torn last line (a kill in mid-write) off cases.jsonl, keeping the fragment aside."""
        data = self._cases_bytes()
        if not data or data.endswith(b"\n"):
            return
        keep = data.rfind(b"\n") + 1
        aside = self.path / f"cases.jsonl.torn-{int(time.time())}"
        safe_files.write_bytes(aside, self.root, data[keep:])
        fd = safe_files.open_fd(self.cases_path, self.root, os.O_RDWR)
        try:
            os.ftruncate(fd, keep)
            os.fsync(fd)
        finally:
            os.close(fd)
        print(f"warning: {self.cases_path}: an incomplete last line (a run killed while writing it) was moved to "
              f"{aside.name}; that case will run again", file=sys.stderr)

    def append(self, record: CaseRecord) -> None:
        """Append one line with write(2) on an O_APPEND descriptor (retrying short writes), then fsync."""
        line = (record.model_dump_json(exclude_none=True) + "\n").encode()
        fd = safe_files.open_fd(self.cases_path, self.root, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            safe_files.write_all(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def write_samples(self, case_id: str, samples: RawSamples) -> None:
        safe_files.write_json(self.samples_path(case_id), self.root, samples.model_dump(mode="json"))

    def write_case(self, case: CaseSpec) -> Path:
        return safe_files.write_json(self.case_path(case.id), self.root, case.model_dump(mode="json"))

    def open_log(self, path: Path, mode: str = "wb"):
        """A log (or other file) under this run opened for writing without following a link."""
        return safe_files.open_file(path, self.root, mode)

    # ------------------------------------------------------------ reading

    def read_json(self, path: Path, what: str):
        """A JSON file of this run (no link out of it), or RunError naming the file and what is wrong."""
        try:
            return json.loads(safe_files.read_bytes(path, self.path).decode("utf-8"))
        except IsADirectoryError:
            raise RunError(f"{path}: is a directory, not {what}") from None
        except OSError as exc:
            raise RunError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise RunError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}): not {what}") from None
        except (json.JSONDecodeError, RecursionError) as exc:
            raise RunError(f"{path}: not {what}: {exc}") from None

    def _raw_meta(self) -> dict:
        raw = self.read_json(self.meta_path, "run metadata (JSON)")
        if not isinstance(raw, dict):
            raise RunError(f"{self.meta_path}: run metadata must be a JSON object, not {type(raw).__name__}")
        version = raw.get("format_version", 1)
        if type(version) is not int or version < 1:
            raise RunError(f"{self.meta_path}: format_version must be a positive integer, not {version!r}")
        return raw

    def snapshot_bytes(self) -> bytes:
        """The suite as the run started it (suite.yaml), read from inside the run; RunError if it cannot be."""
        try:
            return safe_files.read_bytes(self.suite_snapshot, self.path)
        except OSError as exc:
            raise RunError(f"{self.suite_snapshot}: cannot read the run's suite: {exc.strerror or exc}") from None

    def format_version(self) -> int:
        return int(self._raw_meta().get("format_version", 1))

    def _cases_bytes(self) -> bytes:
        if not (self.cases_path.exists() or self.cases_path.is_symlink()):
            return b""
        try:
            return safe_files.read_bytes(self.cases_path, self.path)
        except IsADirectoryError:
            raise RunError(f"{self.cases_path}: is a directory, not the run's records (one JSON line per case)") \
                from None
        except OSError as exc:
            raise RunError(f"{self.cases_path}: cannot read: {exc.strerror or exc}") from None

    def _lines(self) -> list[dict]:
        lines = []
        for n, line in enumerate(self._cases_bytes().decode("utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                lines.append(json.loads(line))
            except (json.JSONDecodeError, RecursionError):
                print(f"warning: {self.cases_path}:{n}: incomplete record ignored", file=sys.stderr)
        return lines

    def records(self) -> list[CaseRecord]:
        """Finished cases, in file order; a case retried after failing appears twice and the last wins."""
        version = self.format_version()
        if version > FORMAT_VERSION:
            raise RunError(f"run '{self.run_id}' has format {version}, newer than this bench reads "
                           f"({FORMAT_VERSION}); upgrade bench")
        out: dict[str, CaseRecord] = {}
        for n, line in enumerate(self._lines(), 1):
            if not isinstance(line, dict):
                raise RunError(f"{self.cases_path}: record {n} is not a JSON object ({type(line).__name__}); repair "
                               f"or remove that line")
            try:
                record = CaseRecord.model_validate(self._upgrade(line, version))
            except (ValidationError, KeyError, TypeError, AttributeError, ValueError) as exc:
                raise RunError(f"{self.cases_path}: record {n} does not match format {version}: {exc}") from None
            out.pop(record.id, None)
            out[record.id] = record
        return list(out.values())

    def _upgrade(self, line: dict, version: int) -> dict:
        """A record line of any format as a current CaseRecord dict (bench/records/upgrade.py)."""
        return upgrade.typed_description(self._upgrade_v1(line) if version == 1 else line)

    def _upgrade_v1(self, line: dict) -> dict:
        if not isinstance(line, dict):
            raise TypeError(f"a record must be a JSON object, not {type(line).__name__}")
        spec_file = self.case_path(str(line.get("id")))
        handed = self.read_json(spec_file, "a case file (JSON)") if spec_file.is_file() else None
        return upgrade.record_v1(line, handed)

    def meta(self, records: list[CaseRecord] | None = None) -> RunMeta:
        raw = self._raw_meta()
        if raw.get("format_version", 1) == 1:
            records = self.records() if records is None else records
            reference = next((r.case.reference for r in records if r.case.reference), None)
            raw = upgrade.meta_v1(raw, reference, self._suite_regression())
        try:
            return RunMeta.model_validate(raw)
        except ValidationError as exc:
            raise RunError(f"{self.meta_path}: does not match format {raw.get('format_version')}: {exc}") from None

    def _suite_regression(self) -> dict:
        """A format-1 run's regression thresholds, read from its suite snapshot (not the whole suite: its
        backends need not exist any more); a bad value is reported as FILE:LINE: regression.field."""
        from bench.records.yaml_lines import SuiteError, format_errors, read_yaml

        try:
            suite, index = read_yaml(safe_files.check_inside(self.suite_snapshot, self.path))
        except SuiteError:
            return {}
        section = suite.get("regression")
        if not isinstance(section, dict):
            return {}
        try:
            RegressionSettings.model_validate(section)
        except ValidationError as exc:
            raise RunError(format_errors(self.suite_snapshot, index, exc.errors(), RegressionSettings,
                                         prefix=("regression",))) from None
        return section

    def samples(self, case_id: str) -> RawSamples | None:
        path = self.samples_path(case_id)
        if not (path.exists() or path.is_symlink()):
            return None
        raw = self.read_json(path, "raw samples (JSON)")
        try:
            if self.format_version() == 1:
                raw = upgrade.samples_v1(raw)
            return None if raw is None else RawSamples.model_validate(raw)
        except (ValidationError, KeyError, TypeError, AttributeError, ValueError) as exc:
            raise RunError(f"{path}: raw samples do not match format {self.format_version()}: {exc}") from None


@dataclass
class Run:
    """A finished (or interrupted) run as readers see it: metadata and typed records, in planned order."""

    dir: RunDir
    meta: RunMeta
    records: list[CaseRecord]
    _samples: dict[str, RawSamples | None] = field(default_factory=dict, repr=False)

    @property
    def run_id(self) -> str:
        return self.dir.run_id

    @property
    def path(self) -> Path:
        return self.dir.path

    @property
    def reference(self) -> str | None:
        return self.meta.reference

    @property
    def missing(self) -> list[str]:
        """Planned cases with no record (the run was interrupted)."""
        done = {r.id for r in self.records}
        return [c for c in self.meta.case_ids if c not in done]

    def machine_of(self, record: CaseRecord | None = None) -> str:
        """The id of the machine that measured `record`: its own fingerprint's (CaseRecord.machine), or, for a
        record without one (made before records carried it) or no record, the hash of the run's environment,
        prefixed `env:` (a hash of other fields: never equal to a record's)."""
        if record is not None and record.machine is not None:
            return record.machine.machine_id
        return f"env:{self.meta.environment.machine_id}"

    def samples(self, case_id: str) -> RawSamples | None:
        if case_id not in self._samples:
            self._samples[case_id] = self.dir.samples(case_id)
        return self._samples[case_id]


def find_run(spec: str | Path, results_dir: Path | str = "results") -> RunDir:
    """A run named by its directory, or by its id in results_dir; RunError when there is none."""
    spec = str(spec)
    as_dir = Path(spec)
    if (as_dir / "run.json").is_file():
        real = as_dir.resolve()  # `results/x/logs/..` is run x, and its reports go to reports/x
        return RunDir(real.parent, check_plain_name(real.name, "run directory name"))
    run = RunDir(results_dir, spec)
    if not spec or "/" in spec or spec in (".", ".."):
        raise RunError(f"no run '{spec}': neither a run directory nor a run id in {results_dir}")
    half_made = run.half_made() if not run.exists() else None
    if half_made or not run.exists():
        raise RunError(half_made or f"no run '{spec}': neither a run directory nor a run id in {results_dir}")
    return run


def load_run(spec: str | Path | RunDir, results_dir: Path | str = "results") -> Run:
    """The one loader: a run of any format, by id, directory or RunDir, with records in planned order."""
    run = spec if isinstance(spec, RunDir) else find_run(spec, results_dir)
    records = run.records()
    meta = run.meta(records)
    order = {case_id: i for i, case_id in enumerate(meta.case_ids)}
    records.sort(key=lambda r: order.get(r.id, len(order)))
    return Run(run, meta, records)
