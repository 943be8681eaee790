"""Latency from raw per-token stamps: TTFT, TPOT, inter-token gaps, end-to-end time and throughputs.

Each repetition is one `generate` call (`one_generation`); the clock marks every token step. From those
raw stamps (kept) `derive` computes, once per case, the per-repetition samples and their summaries;
throughput is total tokens over total time (`throughput_parts`, the one formula the worker's records and
the gate's bootstrap share). When to stop repeating is bench/measure/policy.py's rule; the interleaved
runner (bench/run/interleave.py) drives the repetitions.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bench.core.timing import Clock
from bench.measure import stats
from bench.metrics import LATENCY_SAMPLES, THROUGHPUTS
from bench.records.schema import MetricValue, RawSamples


def prompt_batch(ids: list[int], batch_size: int, prompt_tokens: int) -> list[list[int]]:
    """`batch_size` distinct prompts of exactly `prompt_tokens` real tokens, evenly spread over ids."""
    if len(ids) < prompt_tokens:
        raise ValueError(f"evaluation text has {len(ids)} tokens, fewer than prompt_tokens={prompt_tokens}")
    span = len(ids) - prompt_tokens
    starts = [span * i // max(batch_size, 1) for i in range(batch_size)]
    return [ids[s: s + prompt_tokens] for s in starts]


def throughput_parts(metric: str, batch_size: int, prompt_tokens: int, new_tokens: int,
                     ttft_s: np.ndarray, e2e_s: np.ndarray) -> tuple[int, np.ndarray]:
    """(tokens per repetition, seconds of each repetition) of a throughput; the throughput is their sums' ratio.

    prefill: batch x prompt tokens over the TTFT; decode: batch x (new tokens - 1) over e2e - TTFT."""
    if metric == "prefill_tok_s":
        return batch_size * prompt_tokens, ttft_s
    if metric == "decode_tok_s":
        return batch_size * (new_tokens - 1), e2e_s - ttft_s
    raise KeyError(f"not a generation throughput: {metric}")


def per_repetition(stamps_ns: list[list[int]]) -> dict[str, list[float]]:
    """TTFT, TPOT and e2e (ms) of each repetition from its per-token stamps (ns): TPOT = (e2e - TTFT) / (n - 1)."""
    stamps = np.asarray(stamps_ns, dtype=np.int64).reshape(len(stamps_ns), -1)
    ttft_ns, e2e_ns = stamps[:, 0], stamps[:, -1]
    return {"ttft_ms": (ttft_ns / 1e6).tolist(), "tpot_ms": ((e2e_ns - ttft_ns) / (stamps.shape[1] - 1) / 1e6).tolist(),
            "e2e_ms": (e2e_ns / 1e6).tolist()}


def derive(stamps_ns: list[list[int]], batch_size: int, prompt_tokens: int, process: Sequence[int] | None = None,
           level: float = 0.95) -> tuple[RawSamples, dict[str, MetricValue]]:
    """Per-repetition samples and their metrics (summaries, throughputs) from raw per-token stamps.

    `process`: the process each repetition ran in (default: one process); the summaries' intervals are then
    a two-stage bootstrap over processes and repetitions (bench/measure/stats.py)."""
    stamps = np.asarray(stamps_ns, dtype=np.int64)  # [repetitions, new_tokens]
    reps, new_tokens = stamps.shape
    groups = list(process) if process is not None else [0] * reps
    ttft_ns = stamps[:, 0]
    e2e_ns = stamps[:, -1]
    samples = RawSamples(
        stamps_ns=[list(map(int, row)) for row in stamps],
        **per_repetition(stamps_ns),
        itl_ms=(np.diff(stamps, axis=1).ravel() / 1e6).tolist(),
        process=groups if process is not None else [],
    )
    gap_groups = [p for p in groups for _ in range(new_tokens - 1)]
    metrics: dict[str, MetricValue] = {
        name: stats.summarize_grouped(samples.series(name), gap_groups if name == "itl_ms" else groups, level)
        for name in LATENCY_SAMPLES}
    for name in THROUGHPUTS:
        tokens, seconds = throughput_parts(name, batch_size, prompt_tokens, new_tokens, ttft_ns / 1e9, e2e_ns / 1e9)
        metrics[name] = stats.ratio_of_sums([tokens] * reps, seconds)
    return samples, metrics


def one_generation(backend, prompts: list[list[int]], new_tokens: int, clock: Clock) -> list[int]:
    """The stamps (ns from submitting the prompts to each token) of one timed generation."""
    clock.start()
    backend.generate(prompts, new_tokens, clock.mark)
    stamps = clock.stamps_ns()
    if len(stamps) != new_tokens:
        raise RuntimeError(f"backend marked {len(stamps)} token steps for new_tokens={new_tokens}")
    return stamps
