"""Per-level numbers from raw requests: the samples kept on disk, and the level's metrics derived from them.

`samples` turns the client's outcomes into RequestSamples (ns since the level started). Output tokens are
what the server says (`output_count`): its usage, else max_tokens when it stopped on length, else one per
chunk for a server that streams one token per chunk; the text re-tokenized with the model's tokenizer (after
the level, off the hot path) is the fallback and the cross-check (`retokenize_disagreements`). `level_metrics` derives
every `serve_*` metric of bench/metrics.py from those samples alone, so a report or the gate can
rebuild them: latencies per successful request (TTFT, TPOT, e2e, and from the scheduled send time),
ITL pooled over chunks, throughputs as total tokens / the level's duration (first send to last answer),
goodput under the SLOs, error rate and counts by kind, usage disagreements.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import numpy as np

from bench.measure import stats
from bench.records.schema import SLO, MetricValue, RequestSample
from bench.serving.traffic.client import Outcome
from bench.serving.traffic.prompts import Prompt

# per successful request: one value each (the units the gate resamples)
PER_REQUEST = ("serve_ttft_ms", "serve_tpot_ms", "serve_e2e_ms", "serve_ttft_sched_ms", "serve_e2e_sched_ms",
               "serve_tok_s_per_user")


def output_count(o: Outcome, asked: int, retokenized: int, chunk_is_token: bool) -> tuple[int, str]:
    """(output tokens of a request, where the count comes from): the server's usage.completion_tokens; else
    max_tokens (`asked`) when it stopped with finish_reason length; else its chunks when the server streams one
    token per chunk; else the re-tokenized text."""
    usage = (o.usage or {}).get("completion_tokens")
    if usage is not None:
        return usage, "usage"
    if o.finish_reason == "length":
        return asked, "length"
    if chunk_is_token:
        return len(o.chunks_ns), "chunks"
    return retokenized, "retokenized"


def samples(outcomes: list[Outcome], prompts: list[Prompt], started_ns: int,
            count: Callable[[str], int], chunk_is_token: bool = False) -> list[RequestSample]:
    """The raw record of a level's sent requests, times relative to the level's start."""
    def rel(ns: int | None) -> int | None:
        return None if ns is None else ns - started_ns

    out = []
    for o in outcomes:
        usage = o.usage or {}
        prompt = prompts[o.index % len(prompts)]
        retokenized = count("".join(o.text)) if o.text else 0
        tokens, source = output_count(o, prompt.output_tokens, retokenized, chunk_is_token)
        out.append(RequestSample(
            scheduled_ns=o.scheduled_ns - started_ns, sent_ns=rel(o.sent_ns),
            chunks_ns=[ns - started_ns for ns in o.chunks_ns], end_ns=rel(o.end_ns),
            input_tokens=prompt.input_tokens, output_tokens=tokens, retokenized_tokens=retokenized,
            tokens_from=source, usage_input_tokens=usage.get("prompt_tokens"),
            usage_output_tokens=usage.get("completion_tokens"), error_kind=o.error_kind, error=o.error))
    return out


def retokenize_disagreements(requests: list[RequestSample]) -> str | None:
    """A note when the server's token counts differ from re-tokenizing the streamed text (None when they agree)."""
    differ = [s for s in ok_requests(requests) if s.tokens_from not in (None, "retokenized")
              and s.retokenized_tokens is not None and s.retokenized_tokens != s.output_tokens]
    if not differ:
        return None
    first = differ[0]
    return (f"{len(differ)} request(s): the server's output token count ({first.tokens_from}: {first.output_tokens}) "
            f"differs from re-tokenizing the streamed text ({first.retokenized_tokens}); throughput and TPOT use "
            f"the server's count")


def request_values(s: RequestSample) -> dict[str, float]:
    """The per-request latencies of one successful request (ms; tokens/s for tok_s_per_user)."""
    assert s.sent_ns is not None and s.end_ns is not None and s.chunks_ns
    ttft = (s.chunks_ns[0] - s.sent_ns) / 1e6
    e2e = (s.end_ns - s.sent_ns) / 1e6
    values = {"serve_ttft_ms": ttft, "serve_e2e_ms": e2e,
              "serve_ttft_sched_ms": (s.chunks_ns[0] - s.scheduled_ns) / 1e6,
              "serve_e2e_sched_ms": (s.end_ns - s.scheduled_ns) / 1e6}
    tokens = s.output_tokens or 0
    if tokens > 1:
        values["serve_tpot_ms"] = (e2e - ttft) / (tokens - 1)
    if e2e > 0:
        values["serve_tok_s_per_user"] = tokens / (e2e / 1e3)
    return values


def meets(values: dict[str, float], slo: SLO) -> bool:
    limits = {"serve_ttft_ms": slo.ttft_ms, "serve_tpot_ms": slo.tpot_ms, "serve_e2e_ms": slo.e2e_ms}
    return all(limit is None or values.get(name, float("inf")) <= limit for name, limit in limits.items())


def ok_requests(requests: list[RequestSample]) -> list[RequestSample]:
    return [s for s in requests if s.error_kind is None and s.sent_ns is not None and s.end_ns is not None
            and s.chunks_ns]


def level_metrics(requests: list[RequestSample], slo: SLO,
                  offered_rps: float | None) -> tuple[dict[str, MetricValue], dict[str, int]]:
    """(metrics, failed requests by kind) of one level."""
    sent = [s for s in requests if s.sent_ns is not None]
    ok = ok_requests(requests)
    per_request = [request_values(s) for s in ok]
    metrics: dict[str, MetricValue] = {
        name: stats.summarize([v[name] for v in per_request if name in v]) for name in PER_REQUEST}
    metrics["serve_itl_ms"] = stats.summarize([gap / 1e6 for s in ok for gap in np.diff(s.chunks_ns)])
    metrics["serve_schedule_lag_ms"] = stats.summarize([(s.sent_ns - s.scheduled_ns) / 1e6 for s in sent
                                                        if s.sent_ns is not None])
    ends = [s.end_ns for s in sent if s.end_ns is not None]
    first = min((s.sent_ns for s in sent if s.sent_ns is not None), default=None)
    duration = (max(ends) - first) / 1e9 if ends and first is not None and max(ends) > first else None
    output = sum(s.output_tokens or 0 for s in ok)
    total = output + sum(s.input_tokens or 0 for s in ok)
    good = sum(meets(v, slo) for v in per_request)
    chunks = sum(len(s.chunks_ns) for s in ok)
    metrics.update({
        "serve_request_rps": len(ok) / duration if duration else None,
        "serve_output_tok_s": output / duration if duration else None,
        "serve_total_tok_s": total / duration if duration else None,
        "serve_goodput_rps": good / duration if duration else None,
        "serve_slo_fraction": good / len(sent) if sent else None,
        "serve_error_rate": (len(sent) - len(ok)) / len(sent) if sent else None,
        "serve_offered_rps": offered_rps, "serve_duration_s": duration,
        "serve_requests": len(sent), "serve_ok_requests": len(ok),
        "serve_input_tokens": total - output, "serve_output_tokens": output,
        "serve_tokens_per_chunk": output / chunks if chunks else None,
        "serve_usage_mismatches": sum(_usage_differs(s) for s in ok),
    })
    ok_ids = {id(s) for s in ok}
    errors = Counter(s.error_kind or "incomplete" for s in sent if id(s) not in ok_ids)
    return metrics, dict(errors)


def _usage_differs(s: RequestSample) -> bool:
    mine = s.retokenized_tokens if s.retokenized_tokens is not None else s.output_tokens  # bench's own count
    return ((s.usage_input_tokens is not None and s.usage_input_tokens != s.input_tokens) or
            (s.usage_output_tokens is not None and s.usage_output_tokens != mine))


def offered_rate(scheduled_ns: list[int]) -> float | None:
    """Requests per second of an open-loop schedule: (n - 1) / the scheduled span."""
    if len(scheduled_ns) < 2:
        return None
    span = (max(scheduled_ns) - min(scheduled_ns)) / 1e9
    return (len(scheduled_ns) - 1) / span if span > 0 else None


def request_units(requests: list[RequestSample], metric: str):
    """(units [n, k], statistic, per-unit values) of a per-request metric, for the gate; None if it has none.

    ITL is pooled per request: its units are rectangular only when every request has as many gaps."""
    ok = ok_requests(requests)
    if metric in PER_REQUEST:
        values = [v[metric] for v in map(request_values, ok) if metric in v]
        units = np.asarray(values, dtype=float).reshape(-1, 1)
    elif metric == "serve_itl_ms":
        gaps = [np.diff(s.chunks_ns) / 1e6 for s in ok]
        if not gaps or len({len(g) for g in gaps}) != 1 or not len(gaps[0]):
            return None
        units = np.asarray(gaps, dtype=float)
    else:
        return None
    if len(units) < 2:
        return None

    def median(u):
        return np.median(u.reshape(*u.shape[:-2], -1), axis=-1)
    return units, median, np.median(units, axis=1)
