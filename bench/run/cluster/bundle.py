"""What travels between the driver and a node: per finished case, its record, samples and files.

A node runs a unit into a scratch run directory; for each case that finishes it sends back a `CaseBundle`:
the record and raw samples (JSON, as they would be written locally) and the files the case wrote there,
by path relative to the run directory: `logs/<id>.*`, `cases/<id>.json`, `traces/<id>/...`. The driver
writes the files into the run directory first, then hands record and samples to the one writer, so a
record never names a file that is not there.

The reference's log-probabilities never travel: they are an entry of the node's own cache
(bench/measure/refcache.py), written by the reference's perplexity case, which runs first in its model's
unit on the same node. The other way, `reference_inputs` carries the reference's finished records to a
perplexity unit's node when the reference case finished earlier (a resumed run, or a unit run again after
its node died): a case there reads the entry those records name from the node's cache, or computes it
again (bench/run/reference.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from bench.errors import BadInput
from bench.records import safe_files
from bench.records.rundir import RunDir
from bench.records.schema import CaseRecord, RawSamples
from bench.run.plan import Unit

FOLDERS = ("logs", "cases", "traces")  # what a case may write besides its record and samples
INPUT_RECORDS = "cases.jsonl"  # the name reference_inputs gives the reference's records


@dataclass
class CaseBundle:
    """One finished case, as it travels back from its node."""

    record_json: str
    samples_json: str | None = None
    files: dict[str, bytes] = field(default_factory=dict)

    @property
    def record(self) -> CaseRecord:
        return CaseRecord.model_validate_json(self.record_json)

    @property
    def samples(self) -> RawSamples | None:
        return RawSamples.model_validate_json(self.samples_json) if self.samples_json else None


def _files_under(run: RunDir, relative: str) -> list[Path]:
    root = run.path / relative
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []


def case_files(run: RunDir, case_id: str) -> dict[str, bytes]:
    """The files `case_id` left in `run` (a scratch run on a node)."""
    found = [p for p in (run.path / "logs").glob(f"{case_id}.*") if p.is_file()]
    found += _files_under(run, f"cases/{case_id}.json") + _files_under(run, f"traces/{case_id}")
    return {p.relative_to(run.path).as_posix(): p.read_bytes() for p in found}


def bundle(run: RunDir, record: CaseRecord) -> CaseBundle:
    """A finished case of `run` (its record, its samples file if any, its files) ready to travel."""
    samples = run.samples_path(record.id)
    return CaseBundle(record.model_dump_json(exclude_none=True),
                      samples.read_text() if record.ok and samples.is_file() else None,
                      case_files(run, record.id))


def safe_path(run: RunDir, relative: str) -> Path:
    """Where a travelled file goes in `run`: only under the folders a case writes, never outside the run."""
    parts = PurePosixPath(relative).parts
    if not parts or parts[0] not in FOLDERS or PurePosixPath(relative).is_absolute() or ".." in parts:
        raise BadInput(f"a node sent a file outside the run's {', '.join(FOLDERS)} folders: {relative!r}")
    return run.path.joinpath(*parts)


def write_files(run: RunDir, files: dict[str, bytes]) -> None:
    """Write travelled files into `run`, each atomically (a reader never sees half a file)."""
    for relative, data in files.items():
        safe_files.write_bytes(safe_path(run, relative), run.root, data)


def reference_inputs(run: RunDir, unit: Unit) -> dict[str, bytes]:
    """The finished reference records a perplexity unit reads but will not write (its reference case is done)."""
    if unit.kind != "sequential" or any(c.variant == c.reference for c in unit.cases):
        return {}
    wanted = {(c.reference, c.model, c.perplexity.model_dump_json()) for c in unit.cases}
    lines = [r.model_dump_json(exclude_none=True) + "\n" for r in run.records()
             if r.task == "perplexity" and (r.variant, r.model, r.case.perplexity.model_dump_json()) in wanted]
    return {INPUT_RECORDS: "".join(lines).encode()} if lines else {}


def write_inputs(run: RunDir, inputs: dict[str, bytes]) -> None:
    """On a node, before the unit starts: the reference records `reference_inputs` sent, into the scratch run."""
    for line in inputs.get(INPUT_RECORDS, b"").decode().splitlines():
        run.append(CaseRecord.model_validate_json(line))
    write_files(run, {name: data for name, data in inputs.items() if name != INPUT_RECORDS})
