"""Quality against speed: each latency case paired with the perplexity case of the same run, model and variant
(the report's quality-vs-speed plot, the dashboard's quantization view).

A latency case pairs when it finished ok, has a workload and a decode throughput; its partner is the ok
perplexity case of its run, model and variant that `has_quality` accepts (the last such case when the run
evaluated several windows).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from bench.records.schema import CaseRecord, Workload


@dataclass(frozen=True)
class QualitySpeed:
    """A variant's speed (its latency case at one workload) and quality (its perplexity case), in one run."""

    run: str
    speed: CaseRecord  # the latency case
    quality: CaseRecord  # the perplexity case

    @property
    def workload(self) -> Workload:
        assert self.speed.workload is not None  # a paired latency case has one
        return self.speed.workload

    @property
    def decode_tok_s(self) -> float:
        return self.speed.value("decode_tok_s") or 0.0  # a paired latency case has one

    @property
    def peak_rss_bytes(self) -> float | None:
        """The larger peak RSS of the two cases (each ran in its own processes), or None when neither measured it."""
        return max(filter(None, [self.speed.value("peak_rss_bytes"), self.quality.value("peak_rss_bytes")]),
                   default=None)


def quality_and_speed(records: Iterable[tuple[str, CaseRecord]],
                      has_quality: Callable[[CaseRecord], bool]) -> list[QualitySpeed]:
    """(run, record) pairs -> each pairing latency case with its perplexity case, in the latency cases' order."""
    records = list(records)
    quality = {(run, r.model, r.variant): r for run, r in records
               if r.ok and r.task == "perplexity" and has_quality(r)}
    out = []
    for run, r in records:
        partner = quality.get((run, r.model, r.variant))
        if partner is not None and r.ok and r.task == "latency" and r.workload is not None and r.value("decode_tok_s"):
            out.append(QualitySpeed(run, r, partner))
    return out
