"""The latency measurement: warm-up, then timed generations until the medians are precise enough.

Each repetition is one `generate` call; the clock marks every token step. From those raw stamps
(kept) come TTFT, TPOT, inter-token gaps and end-to-end time; throughput is total tokens over
total time. Repetitions stop once the CI of the TTFT and TPOT medians is within the target, or
at the repetition or time cap, and the reason is recorded.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from bench.core.timing import Clock
from bench.measure import stats
from bench.records.schema import LatencyInfo, MetricValue, RawSamples, Repetitions


@dataclass
class LatencyResult:
    samples: RawSamples
    metrics: dict[str, MetricValue]
    info: LatencyInfo


def prompt_batch(ids: list[int], batch_size: int, prompt_tokens: int) -> list[list[int]]:
    """`batch_size` distinct prompts of exactly `prompt_tokens` real tokens, evenly spread over ids."""
    if len(ids) < prompt_tokens:
        raise ValueError(f"evaluation text has {len(ids)} tokens, fewer than prompt_tokens={prompt_tokens}")
    span = len(ids) - prompt_tokens
    starts = [span * i // max(batch_size, 1) for i in range(batch_size)]
    return [ids[s: s + prompt_tokens] for s in starts]


def derive(stamps_ns: list[list[int]], batch_size: int, prompt_tokens: int,
           level: float = 0.95) -> tuple[RawSamples, dict[str, MetricValue]]:
    """Per-repetition samples and their metrics (summaries, throughputs) from raw per-token stamps."""
    stamps = np.asarray(stamps_ns, dtype=np.int64)  # [repetitions, new_tokens]
    new_tokens = stamps.shape[1]
    ttft_ns = stamps[:, 0]
    e2e_ns = stamps[:, -1]
    decode_ns = e2e_ns - ttft_ns
    samples = RawSamples(
        stamps_ns=[list(map(int, row)) for row in stamps],
        ttft_ms=(ttft_ns / 1e6).tolist(),
        tpot_ms=(decode_ns / (new_tokens - 1) / 1e6).tolist(),
        e2e_ms=(e2e_ns / 1e6).tolist(),
        itl_ms=(np.diff(stamps, axis=1).ravel() / 1e6).tolist(),
    )
    reps = len(stamps)
    metrics: dict[str, MetricValue] = {name: stats.summarize(samples.series(name), level)
                                       for name in ("ttft_ms", "tpot_ms", "e2e_ms", "itl_ms")}
    metrics["prefill_tok_s"] = stats.ratio_of_sums([batch_size * prompt_tokens] * reps, ttft_ns / 1e9)
    metrics["decode_tok_s"] = stats.ratio_of_sums([batch_size * (new_tokens - 1)] * reps, decode_ns / 1e9)
    return samples, metrics


def one_generation(backend, prompts: list[list[int]], new_tokens: int, clock: Clock) -> list[int]:
    """The stamps (ns from submitting the prompts to each token) of one timed generation."""
    clock.start()
    backend.generate(prompts, new_tokens, clock.mark)
    stamps = clock.stamps_ns()
    if len(stamps) != new_tokens:
        raise RuntimeError(f"backend marked {len(stamps)} token steps for new_tokens={new_tokens}")
    return stamps


def measure(backend, prompts: list[list[int]], new_tokens: int, policy: Repetitions, clock: Clock) -> LatencyResult:
    """Run the repetition policy: warm-up, then timed generations until precise enough or capped."""
    for _ in range(policy.warmup):
        backend.generate(prompts, new_tokens, lambda: None)
    all_stamps: list[list[int]] = []
    ttft: list[float] = []
    tpot: list[float] = []
    began = time.monotonic()
    while True:
        stamps = one_generation(backend, prompts, new_tokens, clock)
        all_stamps.append(stamps)
        ttft.append(stamps[0])
        tpot.append((stamps[-1] - stamps[0]) / (new_tokens - 1))
        n = len(all_stamps)
        if n >= policy.min and stats.precise_enough([ttft, tpot], policy.ci_target, policy.ci_level):
            reason = "ci_target_met"
        elif n >= policy.max:
            reason = "max_repetitions"
        elif n >= policy.min and time.monotonic() - began >= policy.max_time_s:
            reason = "max_time"
        else:
            continue
        break
    measured = time.monotonic() - began
    samples, metrics = derive(all_stamps, len(prompts), len(prompts[0]), policy.ci_level)
    return LatencyResult(samples, metrics, LatencyInfo(repetitions=n, stop_reason=reason, measure_seconds=measured))
