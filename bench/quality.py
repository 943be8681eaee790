"""Quality against a reference variant: KL divergence, top-1 agreement and paired delta perplexity.

The reference variant's perplexity case writes the log-probabilities of every scored position,
one float32 .npy file per window, to `<run dir>/reference/<model>/`; `meta.json`, written last,
says the set is complete and which token ids, window and stride it belongs to. Every other
variant's perplexity case (same model, run after it: `reference_first`) streams those files back
one window at a time, memory-mapped, next to its own window, so memory stays O(window x vocab)
whatever the number of tokens. Only per-token scalars (KL, NLL difference) are kept.

Both sides are compared as float32 log-probabilities (the stored precision), renormalized in
float64, so the reference compared with itself gives KL exactly 0 and top-1 agreement exactly 1.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from scipy import stats as _scipy_stats
from scipy.special import log_softmax

from bench.results import RunDir, write_json_atomic

CI_LEVEL = 0.95


def kl_divergence(ref_logprobs: np.ndarray, case_logprobs: np.ndarray) -> np.ndarray:
    """KL(ref || case) in nats for each row of two [positions, vocab] log-probability arrays."""
    ref = np.asarray(ref_logprobs, dtype=np.float64)
    return (np.exp(ref) * (ref - np.asarray(case_logprobs, dtype=np.float64))).sum(axis=-1)


def _as_stored(logprobs: np.ndarray) -> np.ndarray:
    """Log-probabilities at the stored precision (float32), renormalized in float64."""
    return log_softmax(np.asarray(logprobs, dtype=np.float32).astype(np.float64), axis=-1)


class Comparison:
    """Accumulates per-token KL, top-1 agreement and NLL differences, one window pair at a time."""

    def __init__(self) -> None:
        self.kl: list[np.ndarray] = []
        self.nll_ref: list[np.ndarray] = []
        self.nll_case: list[np.ndarray] = []
        self.agree = 0

    def add(self, ref_logprobs: np.ndarray, case_logprobs: np.ndarray, targets: np.ndarray) -> None:
        if ref_logprobs.shape != case_logprobs.shape:
            raise ValueError(f"reference window has shape {ref_logprobs.shape} (positions, vocab), this case "
                             f"{case_logprobs.shape}: different vocabularies or windows cannot be compared")
        ref, case = _as_stored(ref_logprobs), _as_stored(case_logprobs)
        rows = np.arange(len(targets))
        self.kl.append(kl_divergence(ref, case))
        self.agree += int((ref.argmax(axis=-1) == case.argmax(axis=-1)).sum())
        self.nll_ref.append(-ref[rows, targets])
        self.nll_case.append(-case[rows, targets])

    def result(self) -> dict:
        kl, nll_ref, nll_case = (np.concatenate(x) for x in (self.kl, self.nll_ref, self.nll_case))
        diff = nll_case - nll_ref
        n = len(diff)
        mean = float(diff.mean())
        half = float(_scipy_stats.t.ppf((1 + CI_LEVEL) / 2, n - 1) * diff.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0
        ppl_ref = float(np.exp(nll_ref.mean()))
        return {
            "kld_mean": float(kl.mean()),
            "kld_p99": float(np.percentile(kl, 99)),
            "kld_max": float(kl.max()),
            "top1_agreement": self.agree / n,
            "delta_nll": mean,
            "delta_nll_ci": [mean - half, mean + half],
            "delta_ppl": ppl_ref * float(np.expm1(mean)),
            "delta_ppl_ci": [ppl_ref * float(np.expm1(mean - half)), ppl_ref * float(np.expm1(mean + half))],
            "quality_tokens": n,
        }


def compare(ref_windows: Iterable[np.ndarray], case_windows: Iterable[tuple[np.ndarray, np.ndarray]]) -> dict:
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
    path = directory / f"window-{index:04d}.npy"
    tmp = directory / f".window-{index:04d}.{os.getpid()}.tmp.npy"
    np.save(tmp, np.asarray(logprobs, dtype=np.float32))
    os.replace(tmp, path)


def read_windows(directory: Path, n_windows: int) -> Iterator[np.ndarray]:
    """The stored windows in order, each memory-mapped only while it is being compared."""
    for index in range(n_windows):
        yield np.load(directory / f"window-{index:04d}.npy", mmap_mode="r")


# ---------------------------------------------------------------- one perplexity case's side

class QualitySession:
    """Hooked into a perplexity case (`on_window`): writes the reference, or compares with it."""

    def __init__(self, case: dict, ids_sha: str) -> None:
        self.case, self.ids_sha = case, ids_sha
        self.reference = (case.get("extra") or {}).get("reference")
        self.is_reference = case["variant"] == self.reference
        self.run_dir = Path(case.get("run_dir") or ".")
        self.directory = reference_dir(self.run_dir, case["model"])
        self.comparison = Comparison()
        self.index = 0
        self.reason: str | None = None
        self.ref_windows: Iterator[np.ndarray] = iter(())
        if self.reference is None or not case.get("run_dir"):
            self.reason = "no reference variant or run directory (case run outside `bench run`)"
        elif self.is_reference:
            self.directory.mkdir(parents=True, exist_ok=True)
            (self.directory / "meta.json").unlink(missing_ok=True)  # incomplete until finish()
        else:
            self.reason = self._open_reference()

    def _settings(self) -> dict:
        ppl = self.case["perplexity"]
        return {"eval_token_ids_sha256": self.ids_sha, "window": ppl["window"], "stride": ppl["stride"]}

    def _open_reference(self) -> str | None:
        """None when the reference's windows are there and match; else why quality is not applicable."""
        meta_path = self.directory / "meta.json"
        if not meta_path.exists():
            run = RunDir(self.run_dir.parent, self.run_dir.name)
            ref = next((r for r in run.records() if r["variant"] == self.reference
                        and r["model"] == self.case["model"] and r["task"] == "perplexity"), None)
            if ref is None:
                return f"the reference variant '{self.reference}' has no finished perplexity case"
            if ref["status"] != "ok":
                return f"the reference variant '{self.reference}' perplexity case {ref['status']}: {ref.get('reason')}"
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

    def finish(self) -> tuple[dict, dict]:
        """(metrics, not_applicable) of the case."""
        if self.is_reference and self.reason is None:
            write_json_atomic(self.directory / "meta.json", {
                **self._settings(), "windows": self.index, "variant": self.reference, "case_id": self.case["id"]})
        if self.reason is not None:
            return {}, {"quality": self.reason}
        return {**self.comparison.result(), "quality_reference": self.reference}, {}


def reference_first(cases: list) -> list:
    """Cases reordered so each model's reference perplexity case runs before its other perplexity cases."""
    ordered = list(cases)
    for ref in [c for c in cases if c.task == "perplexity" and c.variant == (c.extra or {}).get("reference")]:
        ordered.remove(ref)
        first = next((i for i, c in enumerate(ordered) if c.task == "perplexity" and c.model == ref.model),
                     len(ordered))
        ordered.insert(first, ref)
    return ordered
