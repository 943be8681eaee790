"""The gate's verdicts between runs, computed with the gate itself (bench/gate/compare.py `compare_runs`, the
suite's thresholds via `rule_from`, the history's between-run noise via `noise_lookup`).

For every suite, each loaded run is compared with the run before it (the newest `max_pairs` such pairs):
the overview colours a tile by the newest pair's verdict and the compare view shows any computed pair.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

from bench.gate.compare import compare_runs, rule_from
from bench.gate.history import noise_lookup
from bench.gate.result import GateResult
from bench.site.gather import SiteData

MAX_PAIRS = 12  # per suite: the bootstrap of every pair costs about a second; older pairs show their env diff only


@dataclass
class Pair:
    baseline: str
    current: str
    result: GateResult

    @property
    def key(self) -> str:
        return f"{self.baseline}..{self.current}"

    def status(self, case_id: str, metric: str) -> str | None:
        for c in self.result.comparisons:
            if c.case == case_id and c.metric == metric:
                return c.status
        return None


def consecutive_pairs(data: SiteData, max_pairs: int = MAX_PAIRS) -> list[Pair]:
    pairs = []
    for suite in sorted({r.meta.suite_name for r in data.runs.values()}):
        runs = data.ordered_runs(suite)
        for base, cur in list(itertools.pairwise(runs))[-max_pairs:]:
            result = compare_runs(base, cur, rule_from(cur), history=noise_lookup(data.db, cur))
            pairs.append(Pair(base.run_id, cur.run_id, result))
    return pairs


def latest_verdicts(pairs: list[Pair]) -> dict[tuple[str, str, str], dict]:
    """(suite, case, metric) -> the newest comparison of it (with the pair's run ids), from consecutive pairs."""
    out: dict[tuple[str, str, str], dict] = {}
    for pair in pairs:  # oldest first within a suite: a newer pair overwrites
        suite = pair.result.current.suite
        for c in pair.result.comparisons:
            out[(suite or "", c.case, c.metric)] = {**c.model_dump(), "baseline_run": pair.baseline,
                                                    "current_run": pair.current}
    return out
