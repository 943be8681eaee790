"""The run directory, results/<run-id>/, and the one loader every reader uses.

    run.json          RunMeta: format version, environment fingerprint, the planned case ids
    suite.yaml        the suite file as it was when the run started (what --resume runs)
    cases.jsonl       one CaseRecord per line, per finished case (ok, failed or skipped)
    samples/<id>.json RawSamples of a latency case, written (tmp + rename) before its line is appended
    cases/<id>.json   the CaseSpec handed to its worker process
    logs/<id>.log     the worker's stdout and stderr
    traces/<id>/      profiler output of a profiled case (TensorBoard logdir: traces/)
    reference/        the reference variant's log-probabilities (bench/measure/quality.py)
    .lock             held by the one process writing this run (`RunDir.writer`)

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
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from pydantic import ValidationError

from bench.core.cache import write_json_atomic
from bench.errors import BadInput
from bench.records import upgrade
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


def _write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written (a write may be short)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class RunDir:
    """Paths of one run directory and the operations that keep it intact."""

    def __init__(self, root: Path | str, run_id: str) -> None:
        self.root = Path(root)
        self.run_id = run_id
        self.path = self.root / run_id

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

    # ------------------------------------------------------------ writing

    def create(self, meta: RunMeta) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=False)
        except FileExistsError:
            raise RunError(f"run '{self.run_id}' already exists in {self.root}; use --resume {self.run_id}") from None
        except OSError as exc:
            raise RunError(f"cannot create {self.path}: {exc.strerror}") from None
        write_json_atomic(self.meta_path, meta.model_dump(mode="json"))

    @contextlib.contextmanager
    def writer(self) -> Iterator[None]:
        """Hold the run's write lock for the block: one writer per run, a second one fails at once.

        The lock is an fcntl lock on .lock, released by the kernel when its holder dies (even by kill -9),
        so a stale lock cannot outlive its process. The file names the holder for the error message."""
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self.lock_path.read_text(errors="replace").strip() or "another process"
                raise RunLocked(f"run '{self.run_id}' is being written by {holder}; wait for it to finish, "
                                f"or stop it first") from None
            os.ftruncate(fd, 0)
            _write_all(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                           f"{time.strftime('%Y-%m-%d %H:%M:%S')} ({' '.join(sys.argv)})".encode())
            self.repair_tail()
            yield
        finally:
            os.close(fd)  # releases the lock

    def repair_tail(self) -> None:
        """Cut a torn last line (a kill in mid-write) off cases.jsonl, keeping the fragment aside."""
        if not self.cases_path.exists():
            return
        data = self.cases_path.read_bytes()
        if not data or data.endswith(b"\n"):
            return
        keep = data.rfind(b"\n") + 1
        aside = self.path / f"cases.jsonl.torn-{int(time.time())}"
        aside.write_bytes(data[keep:])
        with open(self.cases_path, "rb+") as f:
            f.truncate(keep)
            os.fsync(f.fileno())
        print(f"warning: {self.cases_path}: an incomplete last line (a run killed while writing it) was moved to "
              f"{aside.name}; that case will run again", file=sys.stderr)

    def append(self, record: CaseRecord) -> None:
        """Append one line with write(2) on an O_APPEND descriptor (retrying short writes), then fsync."""
        line = (record.model_dump_json(exclude_none=True) + "\n").encode()
        fd = os.open(self.cases_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            _write_all(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def write_samples(self, case_id: str, samples: RawSamples) -> None:
        write_json_atomic(self.samples_path(case_id), samples.model_dump(mode="json"))

    def write_case(self, case: CaseSpec) -> Path:
        path = self.case_path(case.id)
        write_json_atomic(path, case.model_dump(mode="json"))
        return path

    # ------------------------------------------------------------ reading

    def _raw_meta(self) -> dict:
        try:
            return json.loads(self.meta_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise RunError(f"{self.meta_path}: unreadable run metadata: {exc}") from None

    def format_version(self) -> int:
        return int(self._raw_meta().get("format_version", 1))

    def _lines(self) -> list[dict]:
        if not self.cases_path.exists():
            return []
        lines = []
        for n, line in enumerate(self.cases_path.read_text(errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
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
            try:
                record = CaseRecord.model_validate(self._upgrade_v1(line) if version == 1 else line)
            except (ValidationError, KeyError, TypeError) as exc:
                raise RunError(f"{self.cases_path}: record {n} does not match format {version}: {exc}") from None
            out.pop(record.id, None)
            out[record.id] = record
        return list(out.values())

    def _upgrade_v1(self, line: dict) -> dict:
        spec_file = self.case_path(str(line.get("id")))
        handed = json.loads(spec_file.read_text()) if spec_file.is_file() else None
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
        from bench.suite.reader import SuiteError, format_errors, read_yaml

        try:
            suite, index = read_yaml(self.suite_snapshot)
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
        if not path.exists():
            return None
        raw = json.loads(path.read_text())
        if self.format_version() == 1:
            raw = upgrade.samples_v1(raw)
        return None if raw is None else RawSamples.model_validate(raw)


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
        return RunDir(as_dir.parent, as_dir.name)
    run = RunDir(results_dir, spec)
    if not spec or "/" in spec or spec in (".", "..") or not run.exists():
        raise RunError(f"no run '{spec}': neither a run directory nor a run id in {results_dir}")
    return run


def load_run(spec: str | Path | RunDir, results_dir: Path | str = "results") -> Run:
    """The one loader: a run of any format, by id, directory or RunDir, with records in planned order."""
    run = spec if isinstance(spec, RunDir) else find_run(spec, results_dir)
    records = run.records()
    meta = run.meta(records)
    order = {case_id: i for i, case_id in enumerate(meta.case_ids)}
    records.sort(key=lambda r: order.get(r.id, len(order)))
    return Run(run, meta, records)
