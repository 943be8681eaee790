"""Quality against a reference variant: KL divergence, top-1 agreement and paired delta perplexity.

The reference variant's perplexity case stores the log-probabilities of every scored position (float32)
as an entry of bench's cache (bench/measure/refcache.py), keyed by everything that decides them, and names
the entry in its record (`PerplexityInfo.reference_logprobs`); the run directory keeps records, samples and
logs only. Every other variant's perplexity case (same model and settings, run after it: `reference_first`)
finds the reference's record in the run directory and reads the entry back one chunk of positions at a
time, next to its own chunk (bench/measure/perplexity.py), so memory stays O(chunk x vocab) whatever the
window and the number of tokens. Only per-token scalars (KL, NLL difference) are kept. When the entry is
not in the cache any more (evicted, another machine's cache, a resumed run), the case's worker recomputes
it first, in a process of its own (bench/run/reference.py); quality is never compared against anything
but the reference's own log-probabilities, and is "not applicable", with the reason, when they cannot be had.

Both sides are compared as float32 log-probabilities (the stored precision), renormalized in float64,
so the reference compared with itself gives KL exactly 0 and top-1 agreement exactly 1.

The confidence interval of the paired NLL difference (and so of Δ PPL) is a block bootstrap over
windows: neighbouring tokens' differences are correlated, so tokens are not independent draws, but
windows score disjoint runs of tokens and are resampled whole (2000 resamples, seeded).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.special import log_softmax

from bench.core.description import BackendDescription
from bench.measure import refcache
from bench.measure.perplexity import ScoredRows
from bench.records.rundir import RunDir
from bench.records.schema import CaseRecord, CaseSpec, Estimate, MetricValue

CI_LEVEL = 0.95
BOOTSTRAP_RESAMPLES = 2000
CI_METHOD = f"block bootstrap over windows ({BOOTSTRAP_RESAMPLES} resamples, seed 0)"


def kl_divergence(ref_logprobs: np.ndarray, case_logprobs: np.ndarray) -> np.ndarray:
    """KL(ref || case) in nats for each row of two [positions, vocab] log-probability arrays."""
    ref = np.asarray(ref_logprobs, dtype=np.float64)
    return (np.exp(ref) * (ref - np.asarray(case_logprobs, dtype=np.float64))).sum(axis=-1)


def _as_stored(logprobs: np.ndarray) -> np.ndarray:
    """Log-probabilities at the stored precision (float32), renormalized in float64."""
    return log_softmax(np.asarray(logprobs, dtype=np.float32).astype(np.float64), axis=-1)


def block_bootstrap_ci(window_sums: np.ndarray, window_counts: np.ndarray, level: float = CI_LEVEL,
                       resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> tuple[float, float] | None:
    """Percentile CI of sum(x) / sum(n) with whole windows resampled; None with fewer than 2 windows."""
    if len(window_sums) < 2:
        return None
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(window_sums), size=(resamples, len(window_sums)))
    means = window_sums[picks].sum(axis=1) / window_counts[picks].sum(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


@dataclass
class QualityScores:
    kld_mean: float
    kld_p99: float
    kld_max: float
    top1_agreement: float
    delta_nll: Estimate
    delta_ppl: Estimate
    tokens: int
    windows: int

    def metrics(self) -> dict[str, MetricValue]:
        return {"kld_mean": self.kld_mean, "kld_p99": self.kld_p99, "kld_max": self.kld_max,
                "top1_agreement": self.top1_agreement, "delta_nll": self.delta_nll, "delta_ppl": self.delta_ppl}


class Comparison:
    """Accumulates per-token KL and top-1 agreement, and per-window NLL sums, a chunk of a window's rows at a time."""

    def __init__(self) -> None:
        self.kl: list[np.ndarray] = []
        self.nll_ref: list[float] = []  # per window: sum of the reference's NLL over its scored tokens
        self.nll_diff: list[float] = []  # per window: sum of (case NLL - reference NLL)
        self.counts: list[int] = []
        self.agree = 0
        self._window: object = None

    def add_rows(self, window: object, ref_logprobs: np.ndarray, case_logprobs: np.ndarray,
                 targets: np.ndarray) -> None:
        """Rows of window `window` (consecutive calls with the same `window` are one window)."""
        if ref_logprobs.shape != case_logprobs.shape:
            raise ValueError(f"reference window has shape {ref_logprobs.shape} (positions, vocab), this case "
                             f"{case_logprobs.shape}: different vocabularies or windows cannot be compared")
        if window != self._window or window is None:
            self._window = window
            self.nll_ref.append(0.0)
            self.nll_diff.append(0.0)
            self.counts.append(0)
        ref, case = _as_stored(ref_logprobs), _as_stored(case_logprobs)
        rows = np.arange(len(targets))
        self.kl.append(kl_divergence(ref, case))
        self.agree += int((ref.argmax(axis=-1) == case.argmax(axis=-1)).sum())
        nll_ref, nll_case = -ref[rows, targets], -case[rows, targets]
        self.nll_ref[-1] += float(nll_ref.sum())
        self.nll_diff[-1] += float((nll_case - nll_ref).sum())
        self.counts[-1] += len(targets)

    def add(self, ref_logprobs: np.ndarray, case_logprobs: np.ndarray, targets: np.ndarray) -> None:
        """One whole window."""
        self.add_rows(None, ref_logprobs, case_logprobs, targets)

    def result(self) -> QualityScores:
        kl = np.concatenate(self.kl)
        sums, counts = np.asarray(self.nll_diff), np.asarray(self.counts, dtype=float)
        n = int(counts.sum())
        mean = float(sums.sum() / n)
        ppl_ref = float(np.exp(sum(self.nll_ref) / n))
        ci = block_bootstrap_ci(sums, counts)
        low, high = ci if ci else (None, None)
        method = CI_METHOD if ci else "no interval: fewer than 2 windows to resample"
        return QualityScores(
            kld_mean=float(kl.mean()), kld_p99=float(np.percentile(kl, 99)), kld_max=float(kl.max()),
            top1_agreement=self.agree / n,
            delta_nll=Estimate(value=mean, ci_low=low, ci_high=high, ci_level=CI_LEVEL, method=method),
            delta_ppl=Estimate(value=ppl_ref * float(np.expm1(mean)),
                               ci_low=None if low is None else ppl_ref * float(np.expm1(low)),
                               ci_high=None if high is None else ppl_ref * float(np.expm1(high)),
                               ci_level=CI_LEVEL, method=method + "; PPL_ref x expm1(delta_nll interval)"),
            tokens=n, windows=len(self.counts))


def compare(ref_windows: Iterable[np.ndarray], case_windows: Iterable[tuple[np.ndarray, np.ndarray]]) -> QualityScores:
    """Quality of (case log-probs, targets) windows against reference windows, both consumed lazily."""
    comparison = Comparison()
    ref_iter = iter(ref_windows)
    for case_logprobs, targets in case_windows:
        comparison.add(next(ref_iter), case_logprobs, targets)
    return comparison.result()


# ---------------------------------------------------------------- one perplexity case's side

@dataclass
class ReferenceLookup:
    """Where a case that is not the reference finds the reference's log-probabilities (`key`: a cache entry,
    bench/measure/refcache.py), or why it cannot (`reason`); `recomputed`: this case made the entry again."""

    key: str | None = None
    reason: str | None = None
    recomputed: bool = False


def reference_parts(case: CaseSpec, model_path: str, description: BackendDescription, ids_sha: str) -> dict:
    """What decides the reference's log-probabilities: the inputs of its cache key (refcache.reference_key)."""
    ppl = case.perplexity
    return {"model": refcache.model_digest(model_path), "eval_token_ids_sha256": ids_sha, "window": ppl.window,
            "stride": ppl.stride, "scoring": ppl.scoring, "backend": case.backend, "options": case.options,
            "threads": case.threads, "device": description.device, "dtype": description.dtype,
            "versions": description.versions}


def reference_record(case: CaseSpec, run_dir: Path) -> CaseRecord | str:
    """The finished reference perplexity case of `case` (same model and perplexity settings) in the run, or why
    quality cannot be measured."""
    run = RunDir(run_dir.parent, run_dir.name)
    ref = next((r for r in reversed(run.records()) if r.variant == case.reference and r.model == case.model
                and r.task == "perplexity" and r.case.perplexity == case.perplexity), None)
    if ref is None:
        return f"the reference variant '{case.reference}' has no finished perplexity case"
    if not ref.ok:
        return f"the reference variant '{case.reference}' perplexity case {ref.status}: {ref.reason}"
    return ref


class QualitySession:
    """Hooked into a perplexity case (`on_rows`): stores the reference's log-probabilities, or compares with them.

    The reference case gives `parts` (reference_parts: its entry's key is made of them); another case gives
    `lookup` (bench/run/reference.py found, or made, the entry); `reason`: quality is not applicable."""

    def __init__(self, case: CaseSpec, ids_sha: str, *, parts: dict | None = None,
                 lookup: ReferenceLookup | None = None, reason: str | None = None) -> None:
        self.case, self.ids_sha = case, ids_sha
        self.is_reference = case.reference is not None and case.variant == case.reference
        self.comparison = Comparison()
        self.reason = reason
        self.key: str | None = None
        self.recomputed = bool(lookup and lookup.recomputed)
        self.writer: refcache.EntryWriter | None = None
        self.reader: refcache.EntryReader | None = None
        self.stored: refcache.StoredWindow | None = None
        if self.reason is not None:
            return
        if case.reference is None:
            self.reason = "no reference variant"
        elif self.is_reference:
            assert parts is not None
            self.key = refcache.reference_key(parts)
            if refcache.is_complete(refcache.entry_path(self.key)):
                refcache.touch(refcache.entry_path(self.key))  # the same reference, already stored: reused
            else:
                try:
                    self.writer = refcache.EntryWriter(self.key, parts)
                except OSError as exc:
                    self.reason = self._unstored(exc)
        else:
            assert lookup is not None
            self.reason = lookup.reason or self._open(lookup.key)

    def _settings(self) -> dict:
        ppl = self.case.perplexity
        return {"eval_token_ids_sha256": self.ids_sha, "window": ppl.window, "stride": ppl.stride,
                "scoring": ppl.scoring}

    def _open(self, key: str | None) -> str | None:
        """None when the reference's entry is there and matches this case; else why quality is not applicable."""
        assert key is not None
        try:
            self.reader = refcache.EntryReader(key)
        except FileNotFoundError:
            return f"the reference's log-probabilities (cache entry {key}) left the cache before this case read them"
        self.key = key
        parts = self.reader.meta["parts"]
        for name, value in self._settings().items():
            if parts.get(name) != value:
                return f"the reference was evaluated with {name}={parts.get(name)}, this case with {value}"
        return None

    def on_rows(self, chunk: ScoredRows) -> None:
        if self.reason is not None:
            return
        reference: np.ndarray | None
        if self.is_reference:
            reference = np.asarray(chunk.logprobs, dtype=np.float32)
            if self.writer is not None:
                try:
                    if chunk.start == 0:
                        self.writer.start_window(chunk.window, chunk.window_rows, chunk.logprobs.shape[-1])
                    self.writer.write(reference)
                except OSError as exc:  # a full disk: this case's perplexity stands, its log-probabilities do not
                    self.reason = self._unstored(exc)
                    return
        else:
            reference = self._reference_rows(chunk)
            if reference is None:
                return
        try:
            self.comparison.add_rows(chunk.window, reference, chunk.logprobs, chunk.targets)
        except ValueError as exc:
            self.reason = str(exc)

    def _unstored(self, exc: OSError) -> str:
        return (f"the reference's log-probabilities cannot be stored in {refcache.section()}: "
                f"{exc.strerror or exc}; free space there, or set BENCH_CACHE")

    def _reference_rows(self, chunk: ScoredRows) -> np.ndarray | None:
        assert self.reader is not None
        if chunk.start == 0:
            self.stored = self.reader.window(chunk.window)
            if self.stored is None:
                self.reason = "the reference has fewer windows than this case"
                return None
            if (self.stored.rows, self.stored.vocab) != (chunk.window_rows, chunk.logprobs.shape[-1]):
                self.reason = (f"reference window has shape {(self.stored.rows, self.stored.vocab)} (positions, "
                               f"vocab), this case {(chunk.window_rows, chunk.logprobs.shape[-1])}: different "
                               f"vocabularies or windows cannot be compared")
                return None
        assert self.stored is not None
        return self.stored.read(chunk.start, chunk.start + len(chunk.targets))

    def finish(self) -> tuple[QualityScores | None, str | None]:
        """(scores, None), or (None, why quality is not applicable). Publishes the reference's entry."""
        stored = self.reader.meta["windows"] if self.reader is not None else None
        if stored is not None and self.reason is None and len(self.comparison.counts) != stored:
            self.reason = f"the reference has {stored} windows, this case {len(self.comparison.counts)}"
        if self.writer is not None and self.reason is None:
            try:
                self.writer.publish({"case_id": self.case.id, "model": self.case.model, "variant": self.case.variant})
                self.writer = None
            except OSError as exc:
                self.reason = self._unstored(exc)
        self.close()
        if self.reason is not None:
            self.key = None  # the record names an entry only when quality was measured with it
            return None, self.reason
        return self.comparison.result(), None

    def close(self) -> None:
        """Release the entry being read, or drop one left half-written (the case failed)."""
        if self.writer is not None:
            self.writer.discard()
            self.writer = None
        if self.reader is not None:
            self.reader.close()
            self.reader = None


def reference_first(cases: list[CaseSpec]) -> list[CaseSpec]:
    """Cases reordered so each model's reference perplexity case runs before its other perplexity cases."""
    ordered = list(cases)
    for ref in [c for c in cases if c.task == "perplexity" and c.variant == c.reference]:
        ordered.remove(ref)
        first = next((i for i, c in enumerate(ordered) if c.task == "perplexity" and c.model == ref.model),
                     len(ordered))
        ordered.insert(first, ref)
    return ordered
