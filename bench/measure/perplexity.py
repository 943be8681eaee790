"""Sliding-window perplexity over token ids, streamed one window at a time, in chunks of positions.

Windows of `window` tokens start every `stride` tokens. Which tokens count is the scoring protocol
(`PerplexitySettings.scoring`):

- `all` (the default; Hugging Face's sliding-window protocol): each window scores only the tokens no
  earlier window scored, so with stride < window every token after the first is scored exactly once,
  with between window-stride and window-1 tokens of context (with stride == window, each window's
  first token has no context and is skipped; `scored_tokens` says how many counted).
- `last-stride` (llama.cpp's `llama-perplexity --ppl-stride`): every window is whole and scores only its
  last `stride` tokens, so every scored token has at least window-stride tokens of context; windows
  start every stride tokens while at least one token follows the window (llama-perplexity's count). Tokens
  1 to window-stride-1, and the tail after the last window, are not scored. On the tokens both score, the
  two protocols see the same window and give the same log-probability.

Memory: one window's logits (the backend's, float32), plus one chunk of positions at a time in float64
(`CHUNK_BYTES` per array): the log-softmax, and what bench/measure/quality.py computes from it, never a
whole window x vocabulary array in float64. Each row is computed exactly as unchunked (row-wise float64
operations); only the order in which per-chunk sums add up differs (relative 1e-16).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Literal

import numpy as np
from scipy.special import log_softmax

from bench.core.timing import Clock
from bench.records.schema import MetricValue, PerplexityInfo

Scoring = Literal["all", "last-stride"]
CHUNK_BYTES = 8 << 20  # one float64 array of a chunk of positions x vocabulary: 8 MiB (13 rows of 152k tokens)


def windows(n_tokens: int, window: int, stride: int, scoring: Scoring = "all") -> Iterator[tuple[int, int, int]]:
    """(begin, end, first_scored) triples; targets are ids[first_scored:end]."""
    if scoring == "last-stride":
        for begin in range(0, n_tokens - window, stride):  # begin + window < n_tokens: a token follows the window
            yield begin, begin + window, begin + window - stride
        return
    scored_until = 1  # token 0 has no context and is never scored
    for begin in range(0, n_tokens, stride):
        end = min(begin + window, n_tokens)
        first_scored = max(scored_until, begin + 1)  # a window's first token has no context in it
        if end > first_scored:
            yield begin, end, first_scored
            scored_until = end
        if end == n_tokens:
            return


def row_chunks(n_rows: int, vocab: int, chunk_bytes: int = CHUNK_BYTES) -> Iterator[slice]:
    """Consecutive slices of a window's scored rows, each at most `chunk_bytes` of float64 (at least one row)."""
    step = max(1, chunk_bytes // (8 * max(vocab, 1)))
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))


def scored_logprobs(logits: np.ndarray, begin: int, first_scored: int, rows: slice | None = None) -> np.ndarray:
    """Next-token log-probability rows [scored tokens, vocab] (float64) predicting the window's scored tokens
    (`rows`: only those of the scored rows)."""
    first = first_scored - 1 - begin  # the position predicting the first scored token
    scored = logits[first:len(logits) - 1]
    return log_softmax(np.asarray(scored[rows] if rows is not None else scored).astype(np.float64), axis=-1)


@dataclass(frozen=True)
class ScoredRows:
    """A chunk of one window's scored rows, as the quality hook sees it."""

    window: int  # index of the window
    start: int  # its first row among the window's scored rows
    window_rows: int  # scored rows of the whole window
    logprobs: np.ndarray  # [rows, vocab] float64 log-probabilities
    targets: np.ndarray  # [rows] the token ids they predict

    @property
    def last(self) -> bool:
        return self.start + len(self.targets) == self.window_rows


def _whole_windows(on_window: Callable[[np.ndarray, np.ndarray], None],
                   then: Callable[[ScoredRows], None] | None) -> Callable[[ScoredRows], None]:
    parts: list[ScoredRows] = []

    def on_rows(chunk: ScoredRows) -> None:
        if then is not None:
            then(chunk)
        parts.append(chunk)
        if chunk.last:
            on_window(np.concatenate([c.logprobs for c in parts]), np.concatenate([c.targets for c in parts]))
            parts.clear()
    return on_rows


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
               clock: Clock | None = None, on_rows: Callable[[ScoredRows], None] | None = None,
               scoring: Scoring = "all", chunk_bytes: int = CHUNK_BYTES,
               on_window: Callable[[np.ndarray, np.ndarray], None] | None = None) -> PerplexityResult:
    """Perplexity of `ids` under `token_logits`, with the evaluation's own throughput.

    `on_rows(chunk)`, if given, sees each chunk of each window's scored rows in order, untimed
    (bench/measure/quality.py compares them with a reference's). `on_window(logprobs, targets)` sees whole
    windows instead (the chunks put together: window x vocabulary float64, for in-process checks)."""
    if on_window is not None:
        on_rows = _whole_windows(on_window, on_rows)
    clock = clock or Clock()
    nll_sum, scored, fed, busy_ns, n_windows = 0.0, 0, 0, 0, 0
    for index, (begin, end, first_scored) in enumerate(windows(len(ids), window, stride, scoring)):
        elapsed_ns, logits = clock.time_ns(partial(token_logits, ids[begin:end]))
        logits = np.asarray(logits)
        targets = np.asarray(ids[first_scored:end])
        for rows in row_chunks(len(targets), logits.shape[-1], chunk_bytes):
            logprobs = scored_logprobs(logits, begin, first_scored, rows)
            nll_sum -= float(logprobs[np.arange(len(logprobs)), targets[rows]].sum())
            if on_rows is not None:
                on_rows(ScoredRows(index, rows.start, len(targets), logprobs, targets[rows]))
        del logits
        scored += end - first_scored
        fed += end - begin
        busy_ns += elapsed_ns
        n_windows += 1
    if scored == 0:
        need = f"more than window ({window})" if scoring == "last-stride" else "at least 2"
        raise ValueError(f"the evaluation text has {len(ids)} tokens: too few to score any with scoring "
                         f"'{scoring}' (need {need})")
    nll_mean = nll_sum / scored
    return PerplexityResult(perplexity=float(np.exp(nll_mean)), nll_mean=nll_mean, nll_sum=nll_sum,
                            scored_tokens=scored, fed_tokens=fed, windows=n_windows, logits_seconds=busy_ns / 1e9,
                            eval_tok_s=fed / (busy_ns / 1e9) if busy_ns else None)
