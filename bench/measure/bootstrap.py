"""The two-stage bootstrap, as arrays over all resamples at once (no Python loop over resamples).

A resample of rows measured in several processes (`groups`: the process of each row): draw the processes
with replacement, then, within each drawn process, as many of its rows as it has, with replacement; with
one process, the rows with replacement. Unequal processes are padded to the largest and the padding
dropped, so a resample holds the rows of the processes it drew (its size varies with them, as in a loop
that concatenates them).

A resample is held as the count of each row in it (`counts`, [n_boot, n rows]). The statistics of the gate
are statistics of the multiset of drawn rows (order plays no part), computed from the counts without
building the resamples:

- `RowMedian`: the median of every value of the drawn rows (a row of inter-token latencies holds one value
  per generated token), exactly `np.median` of the concatenated rows: the mean of the two middle order
  statistics, each found as the first value, in the values sorted once, where the resample's running count
  passes its rank (`OrderedValues`);
- `RatioOfSums`: column 0's total over column 1's total (work / time: a throughput), a matrix product.

Any other statistic (a callable of rows [..., n, k]) gets the resamples built, those of one size together.
"""
from __future__ import annotations

import ctypes
import functools
import math
from collections.abc import Callable

import numpy as np

Statistic = Callable[[np.ndarray], np.ndarray]

_SMALL_PRODUCT = 1 << 18  # rows x inner x columns of one matrix product (see `product`)


class RowMedian:
    """The median of every value of the rows [..., n, k] (the statistic of a sampled metric)."""

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        return np.median(rows.reshape(*rows.shape[:-2], -1), axis=-1)

    def of_counts(self, values: np.ndarray, counts: np.ndarray) -> np.ndarray:
        ordered = OrderedValues(values)
        size = counts.sum(axis=1) * ordered.per_row
        low, high = ordered.at_ranks(counts, (size - 1) // 2, size // 2)
        return (low + high) / 2


class RatioOfSums:
    """Column 0's total over column 1's total of the rows [..., n, 2] (work / time: a throughput)."""

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        return rows[..., 0].sum(axis=-1) / rows[..., 1].sum(axis=-1)

    def of_counts(self, values: np.ndarray, counts: np.ndarray) -> np.ndarray:
        totals = product(counts, values.astype(float))
        return totals[:, 0] / totals[:, 1]


class OrderedValues:
    """The values of rows [n, k] sorted once, with the row of each, and the value of a given rank in a
    resample that holds row r counts[r] times: the first sorted value where the running count of the
    resample's values passes the rank. Found in two steps: the block of sorted positions it lies in (the
    counts before each block's start: a matrix product), then the position within the block (a running
    count over the block)."""

    def __init__(self, values: np.ndarray) -> None:
        flat = values.reshape(len(values), -1)
        self.per_row = flat.shape[1]
        order = np.argsort(flat, axis=None, kind="stable")
        self.ordered, self.row_of = flat.ravel()[order], order // self.per_row
        n_rows, n_values = flat.shape[0], len(order)
        # a block costs a product column per row (cheap) and a position per resample (gathers): balance them
        # (n_rows x n_values / 64 was the fastest square, measured on 60 rows of 1 and 31 values)
        self.block = min(n_values, max(16, math.isqrt(n_rows * n_values) // 8))
        n_blocks = -(-n_values // self.block)
        per_block = np.bincount(self.row_of * n_blocks + np.arange(n_values) // self.block,
                                minlength=n_rows * n_blocks).reshape(n_rows, n_blocks)
        # before[r, j]: how many of row r's values lie before block j
        self.before = (np.cumsum(per_block, axis=1) - per_block).astype(float)
        # the row at each position of each block, the positions past the end counted as a row never drawn
        self.block_rows = np.append(self.row_of, np.full(n_blocks * self.block - n_values, n_rows))
        self.ordered = np.append(self.ordered, np.full(n_blocks * self.block - n_values, np.nan))

    def at_ranks(self, counts: np.ndarray, low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The values of 0-based ranks `low` <= `high` [n_boot] among the values of each resample (`counts`
        [n_boot, n rows]); `high` is searched in `low`'s block where it lies there (almost always: they are
        the two middle ranks), elsewhere in its own."""
        padded = np.concatenate([counts, np.zeros((len(counts), 1), counts.dtype)], axis=1)
        totals = product(counts, self.before)  # [n_boot, n_blocks]: the resample's values before each block
        block_low, block_high = ((totals <= rank[:, None]).sum(axis=1) - 1 for rank in (low, high))
        start, running = self._window(padded, totals, block_low)
        position_low = start + (running <= low[:, None]).sum(axis=1)
        position_high = start + (running <= high[:, None]).sum(axis=1)
        other = np.flatnonzero(block_high != block_low)
        if len(other):
            start, running = self._window(padded[other], totals[other], block_high[other])
            position_high[other] = start + (running <= high[other, None]).sum(axis=1)
        return self.ordered[position_low], self.ordered[position_high]

    def _window(self, padded: np.ndarray, totals: np.ndarray, block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the first sorted position of each resample's `block`, the resample's running count over the block)."""
        start, resamples = block * self.block, np.arange(len(block))[:, None]
        cells = self.block_rows[start[:, None] + np.arange(self.block)] + padded.shape[1] * resamples
        return start, np.cumsum(padded.ravel()[cells], axis=1) + totals[resamples[:, 0], block][:, None]


def product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b (float64), in chunks of a's rows small enough for BLAS to compute each on one thread: on a loaded
    machine a product split over threads waits for busy cores (20-30 ms instead of 0.1 ms, measured here)."""
    a = a.astype(float, copy=False)
    rows = max(1, _SMALL_PRODUCT // max(1, a.shape[1] * (b.shape[1] if b.ndim == 2 else 1)))
    if len(a) <= rows:
        return a @ b
    return np.concatenate([a[i:i + rows] @ b for i in range(0, len(a), rows)])


def draw_counts(rng: np.random.Generator, groups: np.ndarray, n_boot: int) -> np.ndarray:
    """How often each row is in each of n_boot two-stage resamples ([n_boot, n rows], int64): processes
    (`groups`, the process of each row) with replacement, then rows within each drawn process."""
    keep_freed_memory()
    n_rows = len(groups)
    _, process_of = np.unique(groups, return_inverse=True)
    sizes = np.bincount(process_of)
    widest = int(sizes.max())
    # each resample's counts are a row of n_rows + 1 cells: the last one takes the padding of smaller processes
    offsets = (n_rows + 1) * np.arange(n_boot)[:, None]
    if len(sizes) == 1:  # one process: rows with replacement
        cells = offsets + rng.integers(0, n_rows, (n_boot, n_rows))
    else:
        drawn = rng.integers(0, len(sizes), (n_boot, len(sizes)))
        starts = (np.cumsum(sizes) - sizes)[drawn]
        if sizes.min() == widest:
            picks = starts[..., None] + rng.integers(0, widest, (n_boot, len(sizes), widest))
        else:  # padded to the widest process: a smaller one's draws past its size go to the padding cell
            drawn_sizes = sizes[drawn][..., None]
            picks = starts[..., None] + rng.integers(0, drawn_sizes, (n_boot, len(sizes), widest))
            picks[np.broadcast_to(np.arange(widest) >= drawn_sizes, picks.shape)] = n_rows
        # positions in the rows sorted by process, mapped to the rows where they are not sorted (the padding kept)
        if np.any(np.diff(process_of) < 0):
            picks = np.append(np.argsort(process_of, kind="stable"), n_rows)[picks]
        cells = offsets + picks.reshape(n_boot, -1)
    counts = np.bincount(cells.ravel(), minlength=n_boot * (n_rows + 1)).reshape(n_boot, n_rows + 1)
    return counts[:, :n_rows]


def resample(values: np.ndarray, groups: np.ndarray, statistic: Statistic, rng: np.random.Generator,
             n_boot: int) -> np.ndarray:
    """The statistic of n_boot two-stage resamples of the rows `values` [n, k]."""
    return of_counts(values, statistic, draw_counts(rng, groups, n_boot))


@functools.cache
def keep_freed_memory() -> None:
    """Let glibc's malloc keep up to 64 MiB of freed memory for reuse (once per process; nothing elsewhere).

    By default it returns memory to the kernel as soon as 128 KiB lie free at the top of its heap, and serves
    every block over 128 KiB with a fresh mapping: each resampling's arrays (about 1 MiB each) would then be
    page-faulted in anew. On this project's VM that was 2.2 million faults and 3.4 of 8.2 s of CPU time in a
    200-case `bench compare` (docs/trust.md)."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(-1, 64 << 20)  # M_TRIM_THRESHOLD
        libc.mallopt(-3, 8 << 20)  # M_MMAP_THRESHOLD: blocks below 8 MiB come from the heap
    except (OSError, AttributeError):  # not glibc
        pass


def of_counts(values: np.ndarray, statistic: Statistic, counts: np.ndarray) -> np.ndarray:
    """The statistic of each resample given as counts of the rows `values`."""
    fast = getattr(statistic, "of_counts", None)
    if fast is not None:
        return fast(values, counts)
    out = np.empty(len(counts))
    sizes = counts.sum(axis=1)
    for size in np.unique(sizes):  # any other statistic of rows: the resamples of one size built, passed together
        which = np.flatnonzero(sizes == size)
        rows = np.repeat(np.tile(np.arange(len(values)), len(which)), counts[which].ravel())
        out[which] = statistic(values[rows.reshape(len(which), size)])
    return out
