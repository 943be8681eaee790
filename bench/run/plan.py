"""How a run's cases are grouped into units of work, the thing an executor runs (locally, or on a Ray node).

- `interleaved`: the latency cases of one model and workload, one per variant. They are measured
  together, in rounds, in a shuffled order each round (bench/run/interleave.py), so machine drift hits
  every variant alike and each variant's ratio to the reference comes from paired rounds. A suite with
  `interleave: models` makes it one unit per workload holding every model's variants (cases with
  `CaseSpec.interleave == "models"`), so models too are compared from paired rounds.
- `sequential`: the perplexity cases of one model, the reference first (the others read the
  log-probabilities it stores in the machine's cache), so they belong on one machine, in this order.
- `single`: any other case (a serving case), alone.

A unit is self-contained: given a run directory (the run's own, or a scratch one on another machine) it
produces its cases' records, samples, logs and traces there.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Literal

from bench.records.schema import CaseSpec

UnitKind = Literal["interleaved", "sequential", "single"]


@dataclass(frozen=True)
class Unit:
    kind: UnitKind
    cases: tuple[CaseSpec, ...]

    @property
    def label(self) -> str:
        first = self.cases[0]
        what = first.workload.short if first.workload else first.task
        models = list(dict.fromkeys(case.model for case in self.cases))
        of = first.model if len(models) == 1 else f"{len(models)} models"
        return f"{len(self.cases)} {first.task} case(s) of {of} ({what})"


def plan(cases: list[CaseSpec]) -> list[Unit]:
    """Units in run order (the order of each unit's first case); every case in exactly one unit."""
    groups: dict[tuple, list[CaseSpec]] = defaultdict(list)
    for case in cases:
        if case.task == "latency" and case.interleave == "models":
            key: tuple = ("interleaved", case.workload)
        elif case.task == "latency":
            key = ("interleaved", case.model, case.workload)
        elif case.task == "perplexity":
            key = ("sequential", case.model)
        else:
            key = ("single", case.id)
        groups[key].append(case)
    if any(key[0] == "sequential" for key in groups):  # the quality code (and scipy) only where perplexity runs
        from bench.measure.quality import reference_first
    return [Unit(key[0], tuple(reference_first(members) if key[0] == "sequential" else members))
            for key, members in groups.items()]
