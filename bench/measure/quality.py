"""Quality against a reference variant: KL divergence, top-1 agreement and paired delta perplexity.

The reference variant's perplexity case writes the log-probabilities of every scored position,
one float32 .npy file per window, to `<run dir>/reference/<model>/`; `meta.json`, written last,
says the set is complete and which token ids, window and stride it belongs to. Every other
variant's perplexity case (same model, run after it: `reference_first`) streams those files back
one window at a time, memory-mapped, next to its own window, so memory stays O(window x vocab)
whatever the number of tokens. Only per-token scalars (KL, NLL difference) are kept.

Both sides are compared as float32 log-probabilities (the stored precision), renormalized in
float64, so the reference compared with itself gives KL exactly 0 and top-1 agreement exactly 1.

The confidence interval of the paired NLL difference (and so of Δ PPL) is a block bootstrap over
windows: neighbouring tokens' differences are correlated, so tokens are not independent draws, but
windows score disjoint runs of tokens and are resampled whole (2000 resamples, seeded).
"""
from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.special import log_softmax

from bench.records import safe_files
from bench.records.rundir import RunDir
from bench.records.schema import CaseSpec, Estimate, MetricValue

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
    """Accumulates per-token KL and top-1 agreement, and per-window NLL sums, one window pair at a time."""

    def __init__(self) -> None:
        self.kl: list[np.ndarray] = []
        self.nll_ref: list[float] = []  # per window: sum of the reference's NLL over its scored tokens
        self.nll_diff: list[float] = []  # per window: sum of (case NLL - reference NLL)
        self.counts: list[int] = []
        self.agree = 0

    def add(self, ref_logprobs: np.ndarray, case_logprobs: np.ndarray, targets: np.ndarray) -> None:
        if ref_logprobs.shape != case_logprobs.shape:
            raise ValueError(f"reference window has shape {ref_logprobs.shape} (positions, vocab), this case "
                             f"{case_logprobs.shape}: different vocabularies or windows cannot be compared")
        ref, case = _as_stored(ref_logprobs), _as_stored(case_logprobs)
        rows = np.arange(len(targets))
        self.kl.append(kl_divergence(ref, case))
        self.agree += int((ref.argmax(axis=-1) == case.argmax(axis=-1)).sum())
        nll_ref, nll_case = -ref[rows, targets], -case[rows, targets]
        self.nll_ref.append(float(nll_ref.sum()))
        self.nll_diff.append(float((nll_case - nll_ref).sum()))
        self.counts.append(len(targets))

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


# ---------------------------------------------------------------- the reference's files

def reference_dir(run_dir: Path, model: str) -> Path:
    name = "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in Path(model).name)
    return Path(run_dir) / "reference" / f"{name}-{hashlib.sha256(model.encode()).hexdigest()[:8]}"


def write_window(directory: Path, index: int, logprobs: np.ndarray) -> None:
    """One window's log-probabilities, written atomically and without following a link (safe_files)."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(logprobs, dtype=np.float32))
    safe_files.write_bytes(directory / f"window-{index:04d}.npy", directory, buffer.getvalue())


def read_windows(directory: Path, n_windows: int) -> Iterator[np.ndarray]:
    """The stored windows in order, each memory-mapped only while it is being compared."""
    for index in range(n_windows):
        yield np.load(directory / f"window-{index:04d}.npy", mmap_mode="r")


# ---------------------------------------------------------------- one perplexity case's side

class QualitySession:
    """Hooked into a perplexity case (`on_window`): writes the reference, or compares with it.

    `run_dir` is the case's run directory (None when the case runs outside `bench run`)."""

    def __init__(self, case: CaseSpec, run_dir: Path | None, ids_sha: str) -> None:
        self.case, self.ids_sha = case, ids_sha
        self.reference = case.reference
        self.is_reference = case.variant == self.reference
        self.run_dir = Path(run_dir) if run_dir else None
        ppl = case.perplexity  # one set of reference windows per window and stride (a suite may list several)
        self.directory = reference_dir(self.run_dir or Path("."), case.model) / f"window{ppl.window}-stride{ppl.stride}"
        self.comparison = Comparison()
        self.index = 0
        self.reason: str | None = None
        self.ref_windows: Iterator[np.ndarray] = iter(())
        if self.reference is None or self.run_dir is None:
            self.reason = "no reference variant or run directory (case run outside `bench run`)"
        elif self.is_reference:
            safe_files.makedirs(self.directory, self.run_dir)  # reference/... under the run, no link followed
            (self.directory / "meta.json").unlink(missing_ok=True)  # incomplete until finish()
        else:
            self.reason = self._open_reference()

    def _settings(self) -> dict:
        ppl = self.case.perplexity
        return {"eval_token_ids_sha256": self.ids_sha, "window": ppl.window, "stride": ppl.stride}

    def _open_reference(self) -> str | None:
        """None when the reference's windows are there and match; else why quality is not applicable."""
        assert self.run_dir is not None
        meta_path = self.directory / "meta.json"
        if not meta_path.exists():
            run = RunDir(self.run_dir.parent, self.run_dir.name)
            ref = next((r for r in run.records() if r.variant == self.reference
                        and r.model == self.case.model and r.task == "perplexity"), None)
            if ref is None:
                return f"the reference variant '{self.reference}' has no finished perplexity case"
            if not ref.ok:
                return f"the reference variant '{self.reference}' perplexity case {ref.status}: {ref.reason}"
            return f"the reference variant '{self.reference}' left no log-probabilities in {self.directory}"
        meta = json.loads(meta_path.read_text())
        for key, value in self._settings().items():
            if meta[key] != value:
                return f"the reference was evaluated with {key}={meta[key]}, this case with {value}"
        self.ref_windows = read_windows(self.directory, meta["windows"])
        return None

    def on_window(self, logprobs: np.ndarray, targets: np.ndarray) -> None:
        if self.reason is not None:
            return
        if self.is_reference:
            write_window(self.directory, self.index, logprobs)
            reference: np.ndarray | None = np.asarray(logprobs, dtype=np.float32)
        else:
            reference = next(self.ref_windows, None)
        if reference is None:
            self.reason = "the reference has fewer windows than this case"
            return
        try:
            self.comparison.add(reference, logprobs, targets)
        except ValueError as exc:
            self.reason = str(exc)
        self.index += 1

    def finish(self) -> tuple[QualityScores | None, str | None]:
        """(scores, None), or (None, why quality is not applicable)."""
        if self.is_reference and self.reason is None:
            safe_files.write_json(self.directory / "meta.json", self.directory, {
                **self._settings(), "windows": self.index, "variant": self.reference, "case_id": self.case.id})
        if self.reason is not None:
            return None, self.reason
        return self.comparison.result(), None


def reference_first(cases: list[CaseSpec]) -> list[CaseSpec]:
    """Cases reordered so each model's reference perplexity case runs before its other perplexity cases."""
    ordered = list(cases)
    for ref in [c for c in cases if c.task == "perplexity" and c.variant == c.reference]:
        ordered.remove(ref)
        first = next((i for i, c in enumerate(ordered) if c.task == "perplexity" and c.model == ref.model),
                     len(ordered))
        ordered.insert(first, ref)
    return ordered
