"""Reading runs written in older formats: each upgrade maps one format's JSON onto the next.

Only the loader (bench/records/rundir.py) calls these; everything else sees current records.
Format 1 is what bench 0.1.0 wrote up to commit 3ee83e2 (see bench/records/schema.py for the history).
`typed_description` brings a record of either format whose backend description predates the typed
fields (KV cache, attention kernel, attention shape, peak bandwidth source) up to them: the one place
that reads what `details` used to carry.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.core.description import AttentionInfo, AttentionShape, KVCacheInfo
from bench.metrics import METRICS

# format 1: the case's own fields, flattened into the record
_V1_CASE_FIELDS = ("id", "suite", "model", "backend", "variant", "options", "task", "workload", "repetitions",
                   "perplexity", "threads", "timeout_s", "interpreter", "profile")
_V1_LATENCY_INFO = ("repetitions", "stop_reason", "measure_seconds")
_V1_PERPLEXITY_INFO = ("windows", "scored_tokens", "fed_tokens", "quality_tokens", "quality_reference")
_V1_CI_PAIRS = {"delta_nll": "delta_nll_ci", "delta_ppl": "delta_ppl_ci"}
_V1_CI_METHOD = "t interval of per-token differences, tokens treated as independent (format 1)"
_V1_THREAD_KEYS = ("torch_threads", "threads", "n_threads")
_V1_DESCRIPTION_FIELDS = ("mechanism", "dtype", "device", "model_size_bytes", "n_parameters")


def case_v1(line: dict[str, Any], handed_to_worker: dict[str, Any] | None = None) -> dict[str, Any]:
    """A format-1 case (the flattened fields of a record or a cases/<id>.json) as a CaseSpec dict.

    A format-1 record's `backend` holds the backend's description, which overwrote the backend's name;
    the name is taken from the case file handed to the worker (cases/<id>.json) when it is there."""
    case = {key: line[key] for key in _V1_CASE_FIELDS if key in line}
    if not isinstance(case.get("backend"), str):
        case["backend"] = (handed_to_worker or {}).get("backend") or "unknown (format 1)"
    extra = line.get("extra") or {}
    case["reference"] = extra.get("reference")
    case["peak_memory_bandwidth_gbs"] = extra.get("peak_memory_bandwidth_gbs")
    return case


def backend_v1(described: dict[str, Any] | None, peak_source: str | None = None) -> dict[str, Any] | None:
    """A format-1 free-form describe() dict as a BackendDescription dict."""
    if not described:
        return None
    rest = dict(described)
    out: dict[str, Any] = {key: rest.pop(key) for key in _V1_DESCRIPTION_FIELDS if key in rest}
    out.setdefault("mechanism", "unknown")
    out.setdefault("dtype", "unknown")
    out["device"] = str(out.get("device", "unknown"))
    threads = next((rest.pop(k) for k in _V1_THREAD_KEYS if isinstance(rest.get(k), int)), None)
    out["threads"] = threads
    if isinstance(rest.get("quantization"), str):
        quantization = rest.pop("quantization")
        out["quantization"] = None if quantization == "none" else quantization
    out["versions"] = {k.removesuffix("_version"): str(rest.pop(k)) for k in list(rest) if k.endswith("_version")}
    out["details"] = rest
    return out


def record_v1(line: dict[str, Any], handed_to_worker: dict[str, Any] | None = None) -> dict[str, Any]:
    """A format-1 line of cases.jsonl as a CaseRecord dict (see case_v1 for `handed_to_worker`)."""
    metrics = dict(line.get("metrics") or {})
    latency = {key: metrics.pop(key) for key in _V1_LATENCY_INFO if key in metrics}
    perplexity = {key: metrics.pop(key) for key in _V1_PERPLEXITY_INFO if key in metrics}
    for name, ci_key in _V1_CI_PAIRS.items():
        ci = metrics.pop(ci_key, None)
        if metrics.get(name) is not None:
            low, high = ci if ci else (None, None)
            metrics[name] = {"value": metrics[name], "ci_low": low, "ci_high": high, "ci_level": 0.95,
                             "method": _V1_CI_METHOD}
    backend = dict(line["backend"]) if isinstance(line.get("backend"), dict) else {}
    peak_source = backend.pop("peak_memory_bandwidth_source", None)
    description = backend_v1(backend)
    if description is not None and peak_source is not None:
        description["peak_memory_bandwidth_source"] = peak_source
    return {
        "case": case_v1(line, handed_to_worker),
        "status": line["status"],
        "reason": line.get("reason"),
        "started_at": line.get("started_at", 0.0),
        "wall_seconds": line.get("wall_seconds", 0.0),
        "worker_seconds": line.get("worker_seconds"),
        "python": line.get("python"),
        "model_path": line.get("model_path"),
        # window and stride were copies of the case's perplexity settings; unregistered keys are dropped
        "metrics": {k: v for k, v in metrics.items() if k in METRICS},
        "latency": latency if len(latency) == len(_V1_LATENCY_INFO) else None,
        "perplexity": {"quality_reference": None, **perplexity} if "windows" in perplexity else None,
        "backend": description,
        "not_applicable": line.get("not_applicable") or {},
        "profile": line.get("profile_summary"),
        "output_tail": line.get("output_tail"),
    }


def meta_v1(meta: dict[str, Any], reference: str | None, regression: dict[str, Any]) -> dict[str, Any]:
    """A format-1 run.json as a RunMeta dict; `reference` and `regression` come from its records and suite."""
    known = ("run_id", "suite_name", "suite_path", "created_at", "environment", "case_ids", "command", "cwd")
    return {**{k: meta[k] for k in known if k in meta}, "format_version": 1, "reference": reference,
            "regression": regression}


def samples_v1(raw: dict[str, Any]) -> dict[str, Any] | None:
    """Format-1 samples: a latency case's are unchanged; a perplexity case's held only its token hash."""
    return raw if "stamps_ns" in raw else None


# Format 2 before the description's typed fields: these facts were keys of `details`, dicts of these fields
_LIFTED: dict[str, set[str]] = {"kv_cache": set(KVCacheInfo.model_fields), "attention": set(AttentionInfo.model_fields),
                                "peak_memory_bandwidth_source": set()}  # a string, taken as is


def typed_description(record: dict[str, Any]) -> dict[str, Any]:
    """`record` (a CaseRecord dict) with its backend description's typed fields filled from what older bench wrote.

    - the `details` keys kv_cache, attention and peak_memory_bandwidth_source move to the fields of the same
      names (a key inside them that those fields do not know stays in `details`, so nothing is lost);
    - a latency record without `attention_shape` gets the one its model directory's config.json gives, which is
      what reports read when such a run was written (none when the directory is gone).
    A description that already has a field keeps it; a record without a description is returned as it is."""
    described = record.get("backend")
    if not isinstance(described, dict):
        return record
    described, rest = dict(described), dict(described.get("details") or {})
    for name, known in _LIFTED.items():
        value = rest.get(name)
        if described.get(name) is not None or value is None:
            continue
        if not known:
            described[name] = rest.pop(name)
        elif isinstance(value, dict) and all(key in value for key in _required(name)):
            described[name] = {k: v for k, v in value.items() if k in known}
            unknown = {k: v for k, v in value.items() if k not in known}
            if unknown:
                rest[name] = unknown
            else:
                del rest[name]
    if "details" in described or rest:
        described["details"] = rest
    case = record.get("case")
    if "attention_shape" not in described and isinstance(case, dict) and case.get("task") == "latency":
        described["attention_shape"] = _recorded_shape(record.get("model_path"))
    return {**record, "backend": described}


def _required(field: str) -> list[str]:
    model = KVCacheInfo if field == "kv_cache" else AttentionInfo
    return [name for name, info in model.model_fields.items() if info.is_required()]


def _recorded_shape(model_path: Any) -> dict[str, Any] | None:
    config = Path(model_path) / "config.json" if isinstance(model_path, str) and model_path else None
    try:
        shape = AttentionShape.from_config(json.loads(config.read_text())) if config and config.is_file() else None
    except (OSError, ValueError, TypeError):  # unreadable or not a config: the shape stays unknown, as it was
        return None
    return shape.model_dump() if shape is not None else None
