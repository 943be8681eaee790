"""The gate's verdicts between runs, computed with the gate itself (bench/gate/compare.py `compare_runs`, the
suite's thresholds via `rule_from`, the history's between-run noise) and kept in the verdict cache
(bench/site/verdict_cache.py), so a pair is computed once while neither run, the gate nor the history changes.

For every suite, each loaded run is compared with the run before it (the newest `max_pairs` such pairs):
the overview colours a tile by the newest pair's verdict (`Latest`: the typed comparison and its pair's run ids)
and the compare view shows any computed pair.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

from bench.gate.compare import compare_runs, rule_from
from bench.gate.history import MemoryHistory
from bench.gate.result import Comparison, GateResult, Status
from bench.records.rundir import Run
from bench.records.schema import CaseRecord
from bench.site.gather import KeptRun, SiteData
from bench.site.verdict_cache import Asked, Noise, VerdictCache, pair_key, run_digest

MAX_PAIRS = 12  # per suite: a pair costs a bootstrap per case and metric the first time (then it is cached)


@dataclass
class Pair:
    baseline: str
    current: str
    result: GateResult

    @property
    def key(self) -> str:
        return f"{self.baseline}..{self.current}"

    def status(self, case_id: str, metric: str) -> Status | None:
        for c in self.result.comparisons:
            if c.case == case_id and c.metric == metric:
                return c.status
        return None


def _compare(base: Run, cur: Run, rule, noise: MemoryHistory) -> tuple[GateResult, Asked]:
    """The gate on one pair, with every between-run noise figure it asked the history for."""
    asked = Asked()

    def lookup(record: CaseRecord, metric: str) -> Noise:
        question = (cur.meta.suite_name, cur.machine_of(record), record.id, metric, cur.meta.created_at)
        answer = noise.sigma(*question)
        asked.answers[question] = answer
        return answer
    return compare_runs(base, cur, rule, history=lookup), asked


def consecutive_pairs(data: SiteData, max_pairs: int = MAX_PAIRS, cache: VerdictCache | None = None) -> list[Pair]:
    """Each suite's newest `max_pairs` pairs of consecutive runs, with the gate's result: from the cache where the
    pair, the gate and the history's answers are unchanged, else computed (and cached)."""
    cache = cache if cache is not None else VerdictCache(None)
    digests: dict[str, str] = {}

    def digest(run: KeptRun) -> str:
        if run.run_id not in digests:
            digests[run.run_id] = run_digest(run.path)
        return digests[run.run_id]

    def still_true(asked: Asked) -> bool:
        return all(data.history.sigma(*question) == answer for question, answer in asked.answers.items())

    pairs = []
    for suite in sorted(data.kept):
        for base, cur in list(itertools.pairwise(data.ordered_runs(suite)))[-max_pairs:] if max_pairs else []:
            rule = rule_from(cur.meta_only())  # the current run's suite thresholds
            key = pair_key(cache.gate, rule, digest(base), digest(cur)) if cache.enabled else ""
            result = cache.get(key, still_true) if key else None
            if result is None:
                result, asked = _compare(base.load(), cur.load(), rule, data.history)
                if key:
                    cache.put(key, result, asked)
            pairs.append(Pair(base.run_id, cur.run_id, result))
    return pairs


@dataclass(frozen=True)
class Latest:
    """The newest comparison of a case's metric, and the runs of its pair."""

    comparison: Comparison
    baseline_run: str
    current_run: str


def latest_verdicts(pairs: list[Pair]) -> dict[tuple[str, str, str], Latest]:
    """(suite, case, metric) -> the newest comparison of it (with the pair's run ids), from consecutive pairs."""
    out: dict[tuple[str, str, str], Latest] = {}
    for pair in pairs:  # oldest first within a suite: a newer pair overwrites
        suite = pair.result.current.suite
        for c in pair.result.comparisons:
            out[(suite or "", c.case, c.metric)] = Latest(c, pair.baseline, pair.current)
    return out
