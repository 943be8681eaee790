"""One case, in its own process: load the backend, run its task, write the result file.

Started by the runner as `python -m bench.worker CASE.json RESULT.json` (possibly under another
interpreter). Python-level failures are written as a result with status "failed" (or "skipped"
for a missing optional package); a crash, a kill or a timeout leaves no result file and the runner
records it from the exit status instead.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
import traceback
from pathlib import Path

from backends import backend_class
from backends.base import MissingDependency
from bench import bandwidth
from bench.evaltext import eval_text
from bench.latency import measure, prompt_batch
from bench.memory import MemorySampler
from bench.perplexity import perplexity
from bench.quality import QualitySession
from bench.results import write_json_atomic
from bench.timing import make_clock


def _run_task(case: dict, backend, clock) -> tuple[dict, dict]:
    """(metrics, raw samples) of the case's task."""
    ppl = case["perplexity"]
    ids = backend.tokenize(eval_text(ppl["text"]))
    if case["task"] == "perplexity":
        ids = ids[: ppl["max_tokens"]] if ppl["max_tokens"] else ids
        quality = QualitySession(case, _sha(ids))  # writes the reference's log-probs, or compares with them
        result = perplexity(backend.token_logits, ids, ppl["window"], ppl["stride"], clock, on_window=quality.on_window)
        scores, not_applicable = quality.finish()
        result.update(scores, not_applicable=not_applicable)
        return result, {"eval_token_ids_sha256": _sha(ids), "n_eval_tokens": len(ids)}
    work = case["workload"]
    prompts = prompt_batch(ids, work["batch_size"], work["prompt_tokens"])
    result = measure(backend, prompts, work["new_tokens"], case["repetitions"], clock)
    raw = {"stamps_ns": result.pop("stamps_ns"), **result.pop("samples")}
    return {**result.pop("summary"), **result}, raw


def _sha(ids: list[int]) -> str:
    return hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:16]


def run_case(case: dict, trace_dir: Path | None = None) -> dict:
    from bench.models import resolve_model

    started = time.monotonic()
    sampler = MemorySampler().start()
    cls = backend_class(case["backend"])
    backend = cls(cls.Options(**case["options"]), threads=case["threads"])
    clock = make_clock(backend.device)
    model_path = resolve_model(case["model"])
    load_ns, _ = clock.time_ns(lambda: backend.load(model_path))
    metrics, raw = _run_task(case, backend, clock)
    description = backend.describe()
    memory = sampler.stop()
    profile = None
    if case.get("profile") and trace_dir is not None:  # after measuring and memory sampling: never perturbs them
        from bench.profiling import profile_case

        profile = profile_case(case, backend, trace_dir)
    backend.close()
    metrics.update(load_s=load_ns / 1e9, model_size_bytes=description.get("model_size_bytes"),
                   **{k: v for k, v in memory.items() if k != "not_applicable"})
    not_applicable = {**memory["not_applicable"], **metrics.pop("not_applicable", {})}
    if case["task"] == "latency":  # MBU: weight bytes read per decode step / TPOT, over the known peak
        rates, unknown, description["peak_memory_bandwidth_source"] = bandwidth.for_case(
            case, backend.device, description.get("model_size_bytes"), metrics["tpot_ms"].get("median"))
        metrics.update(rates)
        not_applicable.update(unknown)
    return {
        "status": "ok",
        "metrics": metrics,
        "backend": description,
        "not_applicable": not_applicable,
        "model_path": model_path,
        "worker_seconds": time.monotonic() - started,
        "python": sys.executable,
        "raw": raw,
        **({"profile_summary": profile} if profile else {}),
    }


def _failure(exc: BaseException) -> dict:
    if isinstance(exc, MissingDependency):
        return {"status": "skipped", "reason": str(exc)}
    out_of_memory = isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"
    kind = "out of memory" if out_of_memory else type(exc).__name__
    return {"status": "failed", "reason": f"{kind}: {exc}".strip()}


def main(argv: list[str]) -> int:
    case_path, result_path = map(Path, argv)
    case = json.loads(case_path.read_text())
    case.setdefault("run_dir", str(case_path.parent.parent))  # reference log-probs live there (bench/quality.py)
    try:
        # CASE.json is <run dir>/cases/<id>.json (bench/results.py); traces go to <run dir>/traces/<id>/
        result = run_case(case, trace_dir=case_path.parent.parent / "traces" / case["id"])
    except Exception as exc:  # recorded, never lost: the runner goes on with the next case
        traceback.print_exc()
        result = _failure(exc)
    write_json_atomic(result_path, result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
