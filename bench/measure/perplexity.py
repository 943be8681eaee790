"""Sliding-window perplexity over token ids, streamed one window at a time.

Windows of `window` tokens start every `stride` tokens. Each window scores only the tokens no
earlier window scored, so with stride < window every token after the first is scored exactly
once, with between window-stride and window-1 tokens of context (with stride == window, each
window's first token has no context and is skipped; `scored_tokens` says how many counted).
Memory is one window's logits, O(window x vocab).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

import numpy as np
from scipy.special import log_softmax

from bench.core.timing import Clock
from bench.records.schema import MetricValue, PerplexityInfo


def windows(n_tokens: int, window: int, stride: int) -> Iterator[tuple[int, int, int]]:
    """(begin, end, first_scored) triples; targets are ids[first_scored:end]."""
    scored_until = 1  # token 0 has no context and is never scored
    for begin in range(0, n_tokens, stride):
        end = min(begin + window, n_tokens)
        first_scored = max(scored_until, begin + 1)  # a window's first token has no context in it
        if end > first_scored:
            yield begin, end, first_scored
            scored_until = end
        if end == n_tokens:
            return


def scored_logprobs(logits: np.ndarray, begin: int, first_scored: int) -> np.ndarray:
    """Next-token log-probability rows [scored tokens, vocab] (float64) predicting the window's scored tokens."""
    rows = np.arange(first_scored - 1, begin + len(logits) - 1) - begin  # position predicting each target
    return log_softmax(logits[rows].astype(np.float64), axis=-1)


@dataclass
class PerplexityResult:
    perplexity: float
    nll_mean: float
    nll_sum: float
    scored_tokens: int
    fed_tokens: int
    windows: int
    logits_seconds: float
    eval_tok_s: float | None

    def metrics(self) -> dict[str, MetricValue]:
        return {"perplexity": self.perplexity, "nll_mean": self.nll_mean, "nll_sum": self.nll_sum,
                "eval_tok_s": self.eval_tok_s, "logits_seconds": self.logits_seconds}

    def info(self) -> PerplexityInfo:
        return PerplexityInfo(windows=self.windows, scored_tokens=self.scored_tokens, fed_tokens=self.fed_tokens)


def perplexity(token_logits: Callable[[list[int]], np.ndarray], ids: list[int], window: int, stride: int,
               clock: Clock | None = None,
               on_window: Callable[[np.ndarray, np.ndarray], None] | None = None) -> PerplexityResult:
    """Perplexity of `ids` under `token_logits`, with the evaluation's own throughput.

    `on_window(logprobs, targets)`, if given, sees each window's scored rows (`scored_logprobs`) and
    their target ids, untimed (bench/measure/quality.py compares them with a reference's)."""
    clock = clock or Clock()
    nll_sum, scored, fed, busy_ns, n_windows = 0.0, 0, 0, 0, 0
    for begin, end, first_scored in windows(len(ids), window, stride):
        window_ids = ids[begin:end]
        elapsed_ns, logits = clock.time_ns(partial(token_logits, window_ids))
        logprobs, targets = scored_logprobs(np.asarray(logits), begin, first_scored), np.asarray(ids[first_scored:end])
        nll_sum -= float(logprobs[np.arange(len(targets)), targets].sum())
        if on_window is not None:
            on_window(logprobs, targets)
        scored += end - first_scored
        fed += end - begin
        busy_ns += elapsed_ns
        n_windows += 1
    if scored == 0:
        raise ValueError(f"the evaluation text has {len(ids)} tokens: too few to score any (need at least 2)")
    nll_mean = nll_sum / scored
    return PerplexityResult(perplexity=float(np.exp(nll_mean)), nll_mean=nll_mean, nll_sum=nll_sum,
                            scored_tokens=scored, fed_tokens=fed, windows=n_windows, logits_seconds=busy_ns / 1e9,
                            eval_tok_s=fed / (busy_ns / 1e9) if busy_ns else None)
