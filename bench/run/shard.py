"""`bench run SUITE --shard I/N`: a deterministic share of a suite, for CI matrices that split it over runners.

The suite's cases are planned into units (bench/run/plan.py: a unit's cases stay together, on one machine),
and shard I of N takes every N-th unit in plan order, starting with the I-th. The same suite always gives
the same partition, every unit is in exactly one shard, and each shard is a normal run (its run.json says
which shard it is and lists the whole suite's cases); `bench merge` (bench/records/merge.py) makes one run
of them.
"""
from __future__ import annotations

import re

from bench.errors import BadInput
from bench.records.schema import CaseSpec, ShardInfo
from bench.run.plan import plan


def parse(spec: str) -> tuple[int, int]:
    """'I/N' -> (I, N), with 1 <= I <= N."""
    match = re.fullmatch(r"(\d+)/(\d+)", spec.strip())
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise BadInput(f"--shard {spec!r}: give INDEX/COUNT with 1 <= INDEX <= COUNT, e.g. --shard 2/3")
    return int(match[1]), int(match[2])


def shard_cases(cases: list[CaseSpec], index: int, count: int) -> list[CaseSpec]:
    """The cases of shard `index` of `count` (1-based), in suite order."""
    chosen = {case.id for unit in plan(cases)[index - 1::count] for case in unit.cases}
    return [case for case in cases if case.id in chosen]


def shard_info(cases: list[CaseSpec], index: int, count: int) -> ShardInfo:
    return ShardInfo(index=index, count=count, suite_case_ids=[case.id for case in cases])
