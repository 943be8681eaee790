"""The run directory: results/<run-id>/ and the rules that keep it intact through crashes.

    run.json          run metadata: environment fingerprint, the case list
    suite.yaml        the suite as it was when the run started (what --resume runs)
    cases.jsonl       one JSON line per finished case (ok, failed or skipped), appended atomically
    samples/<id>.json raw samples of a case, written (tmp + rename) before its line is appended
    cases/<id>.json   the case as handed to its worker process
    logs/<id>.log     the worker's stdout and stderr
    traces/<id>/      profiler output of a profiled case (bench/profiling.py; TensorBoard logdir: traces/)

A case counts as finished only once its line is in cases.jsonl, so a run killed at any moment
loses at most the case in flight, and `--resume` redoes nothing that finished.
"""
from __future__ import annotations

import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path


def write_json_atomic(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def new_run_id(suite_name: str) -> str:
    return f"{suite_name}-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}"


class RunDir:
    def __init__(self, root: Path | str, run_id: str) -> None:
        self.run_id = run_id
        self.path = Path(root) / run_id

    @property
    def meta_path(self) -> Path:
        return self.path / "run.json"

    @property
    def suite_snapshot(self) -> Path:
        return self.path / "suite.yaml"

    @property
    def cases_path(self) -> Path:
        return self.path / "cases.jsonl"

    def samples_path(self, case_id: str) -> Path:
        return self.path / "samples" / f"{case_id}.json"

    def case_path(self, case_id: str) -> Path:
        return self.path / "cases" / f"{case_id}.json"

    def log_path(self, case_id: str) -> Path:
        return self.path / "logs" / f"{case_id}.log"

    def exists(self) -> bool:
        return self.meta_path.exists()

    def create(self, meta: dict) -> None:
        self.path.mkdir(parents=True, exist_ok=False)
        write_json_atomic(self.meta_path, meta)

    def meta(self) -> dict:
        return json.loads(self.meta_path.read_text())

    def append_case(self, record: dict) -> None:
        """Append one line with a single write(2) on an O_APPEND descriptor, then fsync."""
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        fd = os.open(self.cases_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def records(self) -> list[dict]:
        """Finished cases; a torn last line (killed mid-write) is ignored with a warning."""
        if not self.cases_path.exists():
            return []
        records = []
        for n, line in enumerate(self.cases_path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                print(f"warning: {self.cases_path}:{n}: incomplete record ignored", file=sys.stderr)
        # A case retried after failing appears twice; the last record wins.
        return list({r["id"]: r for r in records}.values())

    def samples(self, case_id: str) -> dict | None:
        path = self.samples_path(case_id)
        return json.loads(path.read_text()) if path.exists() else None
