"""The verdict cache: the gate's result for a pair of consecutive runs, computed once and reused by every later
`bench site` while neither run, the gate nor the history's answers change (docs/dashboard.md). Entries live in
the dashboard's cache (bench/site/store.py, folder `verdicts/`), named by the sha256 of:

- the entry format (FORMAT) and the gate's code: the bytes of bench/gate/*.py and of the modules its verdicts are
  computed with (GATE_SOURCES), and numpy's version (the bootstrap's random stream);
- the rule's parameters (bench/gate/rule.py `Rule`: thresholds, alpha, resamples, seed);
- both runs' record digests (`run_digest`: run.json, cases.jsonl and every raw samples file, byte for byte).

An entry keeps the GateResult and every between-run noise figure the gate read from the history for it (suite,
machine, case, metric, before -> sigma and runs): it is used only while the history still answers the same, so
recording an older run recomputes exactly the verdicts whose noise it changes.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from bench.gate.result import FORMAT_VERSION, GateResult
from bench.gate.rule import Rule
from bench.records import safe_files
from bench.site.store import Store

FORMAT = 1
_BENCH = Path(__file__).resolve().parent.parent
GATE_SOURCES = (*sorted((_BENCH / "gate").glob("*.py")), _BENCH / "metrics.py", _BENCH / "records" / "schema.py",
                _BENCH / "measure" / "latency.py", _BENCH / "measure" / "stats.py",
                _BENCH / "serving" / "results" / "aggregate.py")

Noise = tuple[float, int] | None  # what the history answers the gate: (between-run sigma, runs) or nothing
Question = tuple[str, str, str, str, float]  # suite, machine, case, metric, before


def gate_digest() -> str:
    """The gate's code and format: a change to any of them makes every cached verdict stale."""
    digest = hashlib.sha256(f"entry {FORMAT} result {FORMAT_VERSION} numpy {np.__version__}".encode())
    for path in GATE_SOURCES:
        if path.is_file():
            digest.update(b"\0" + path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def run_digest(run_dir: Path) -> str:
    """sha256 of what a comparison reads of a run: run.json, cases.jsonl and every raw samples file, each read from
    inside the run (a link out of it is refused: safe_files.UnsafePath)."""
    run_dir = Path(run_dir)
    digest = hashlib.sha256()
    samples = run_dir / "samples"
    names = sorted(os.listdir(samples)) if samples.is_dir() else []
    for path in [run_dir / "run.json", run_dir / "cases.jsonl", *(samples / name for name in names)]:
        if path.exists() or path.is_symlink():
            data = safe_files.read_bytes(path, run_dir)
            digest.update(f"\0{path.relative_to(run_dir)}\0{len(data)}\0".encode() + data)
    return digest.hexdigest()


def pair_key(gate: str, rule: Rule, baseline_digest: str, current_digest: str) -> str:
    parts = [gate, json.dumps(asdict(rule), sort_keys=True, default=str), baseline_digest, current_digest]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


@dataclass
class Asked:
    """The history's answers a comparison used."""

    answers: dict[Question, Noise] = field(default_factory=dict)

    def as_json(self) -> list:
        return [[*question, None if answer is None else list(answer)] for question, answer in self.answers.items()]

    @classmethod
    def from_json(cls, rows: list) -> Asked:
        out = cls()
        for suite, machine, case, metric, before, answer in rows:
            out.answers[(str(suite), str(machine), str(case), str(metric), float(before))] = \
                None if answer is None else (float(answer[0]), int(answer[1]))
        return out


class VerdictCache:
    """Cached pair verdicts under the dashboard's cache `root` (None: no cache)."""

    def __init__(self, root: Path | None) -> None:
        self.store = Store(root, "verdicts", FORMAT)
        self.gate = gate_digest() if root is not None else ""

    @property
    def enabled(self) -> bool:
        return self.store.dir is not None

    def get(self, key: str, still_true: Callable[[Asked], bool]) -> GateResult | None:
        """The cached result of `key` when its entry reads whole and `still_true(its history answers)`, else None."""
        payload = self.store.read(key)
        if payload is None:
            return None
        try:
            asked = Asked.from_json(payload["asked"])
            result = GateResult.model_validate(payload["result"])
        except (KeyError, TypeError, ValueError, IndexError, ValidationError) as exc:
            self.store.corrupt(self.store.path(key), exc)
            return None
        if not still_true(asked):
            return None
        self.store.stats.hits += 1
        return result

    def put(self, key: str, result: GateResult, asked: Asked) -> None:
        self.store.stats.misses += 1
        self.store.write(key, {"baseline": result.baseline.run_id, "current": result.current.run_id,
                               "asked": asked.as_json(), "result": result.model_dump(mode="json", by_alias=True)})
