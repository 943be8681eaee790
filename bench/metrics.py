"""Metric definitions: the name, unit, direction and meaning of every number bench reports.

Reports build their glossary from this table and compare tools read `better` from it, so a metric
is defined once, here, and nowhere else.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    better: str  # "lower" or "higher"
    definition: str


_METRICS = [
    Metric("ttft_ms", "ms", "lower",
           "Time to first token: from the call that submits the prompt batch until the first new token "
           "of every sequence is available on the host (prefill plus one sampling step)."),
    Metric("tpot_ms", "ms", "lower",
           "Time per output token after the first: (end-to-end time - TTFT) / (new tokens - 1), "
           "one sample per repetition."),
    Metric("itl_ms", "ms", "lower",
           "Inter-token latency: every gap between consecutive new-token timestamps, pooled over "
           "repetitions (its distribution, not only its centre)."),
    Metric("e2e_ms", "ms", "lower",
           "End-to-end latency: from submitting the prompt batch until the last new token is available."),
    Metric("prefill_tok_s", "tokens/s", "higher",
           "Prefill throughput: sum of prompt tokens (batch size x prompt length) over all measured "
           "repetitions divided by the sum of their TTFTs."),
    Metric("decode_tok_s", "tokens/s", "higher",
           "Decode throughput: sum of tokens generated after the first (batch size x (new tokens - 1)) "
           "over all measured repetitions divided by the sum of their decode times (e2e - TTFT)."),
    Metric("load_s", "s", "lower",
           "Load time: from the start of the backend's load call until the model is ready to run "
           "(weights read, moved to device, any conversion or compilation done eagerly)."),
    Metric("peak_rss_bytes", "bytes", "lower",
           "Peak resident set size of the case's own process: the larger of the sampled RSS maximum "
           "(psutil, every 5 ms) and the kernel's ru_maxrss. Includes the interpreter and libraries."),
    Metric("peak_rss_delta_bytes", "bytes", "lower",
           "Peak RSS minus the RSS measured just before the model was loaded: memory the model and its "
           "runtime added."),
    Metric("cuda_max_allocated_bytes", "bytes", "lower",
           "torch.cuda.max_memory_allocated() over the case: peak bytes held by tensors."),
    Metric("cuda_max_reserved_bytes", "bytes", "lower",
           "torch.cuda.max_memory_reserved() over the case: peak bytes held by the caching allocator."),
    Metric("nvml_peak_process_bytes", "bytes", "lower",
           "Peak GPU memory NVML reports for the case's process (includes the CUDA context), sampled."),
    Metric("model_size_bytes", "bytes", "lower",
           "Bytes of model weights as loaded by the backend (parameters and buffers, or the file size "
           "for file-based formats)."),
    Metric("perplexity", "", "lower",
           "exp(mean negative log-likelihood) of the evaluation tokens under a sliding window: windows of "
           "`window` tokens advanced by `stride`; each token is scored once, with up to window-1 tokens "
           "of context. The same token ids are used for every backend."),
    Metric("nll_mean", "nats/token", "lower", "Mean negative log-likelihood of the scored tokens."),
    Metric("eval_tok_s", "tokens/s", "higher",
           "Perplexity evaluation throughput: tokens fed through the model (all window tokens) divided by "
           "the time spent in the backend's logits calls."),
    # quality against the reference variant (bench/quality.py): same token ids, windows and positions
    Metric("kld_mean", "nats", "lower",
           "Mean over scored positions of KL(reference || variant) of the next-token distributions, both "
           "taken as float32 log-probabilities renormalized in float64; exactly 0 for the reference itself."),
    Metric("kld_p99", "nats", "lower",
           "99th percentile over scored positions of the per-position KL(reference || variant)."),
    Metric("kld_max", "nats", "lower", "Largest per-position KL(reference || variant)."),
    Metric("top1_agreement", "fraction", "higher",
           "Share of scored positions where the variant's most likely next token is the reference's."),
    Metric("delta_nll", "nats/token", "lower",
           "Mean over scored positions of the paired NLL difference (variant - reference); its 95 % CI "
           "(delta_nll_ci) is a t interval of the per-token differences, treating tokens as independent."),
    Metric("delta_ppl", "", "lower",
           "Perplexity of the variant minus the reference's, PPL_ref x (exp(delta_nll) - 1), with the "
           "95 % CI (delta_ppl_ci) carried over from delta_nll's (paired: the reference's PPL held fixed)."),
    # memory-bandwidth utilization of decoding (bench/bandwidth.py)
    Metric("achieved_bandwidth_gbs", "GB/s", "higher",
           "model_size_bytes / median TPOT, in 1e9 bytes/s: each decode step reads every weight once, so "
           "this is the weight traffic per step (KV-cache and activation traffic not counted)."),
    Metric("mbu", "fraction", "higher",
           "Memory-bandwidth utilization: achieved_bandwidth_gbs / peak_memory_bandwidth_gbs."),
    Metric("peak_memory_bandwidth_gbs", "GB/s", "higher",
           "The device's peak memory bandwidth MBU is relative to: the suite's peak_memory_bandwidth_gbs "
           "when stated, else the spec sheet of a known GPU (table in bench/bandwidth.py)."),
    # profiles of profiled latency cases ("Where the time goes"; bench/profiling.py), taken after measuring
    Metric("op_self_time_us", "µs", "lower",
           "Self time of an operator over the profiled generations: time inside it, excluding operators "
           "it called, summed over its calls (CPU, and device where traced). Shares are fractions of the "
           "summed self time of all operators; categories (attention / matmul / other) go by operator name."),
    Metric("profile_step_ms", "ms", "lower",
           "Wall time of one generation under the profiler (mean over the profiled steps), split into "
           "prefill (until the first token) and decode; the profiler's overhead is included."),
]

METRICS: dict[str, Metric] = {m.name: m for m in _METRICS}


def unit(name: str) -> str:
    return METRICS[name].unit if name in METRICS else ""
