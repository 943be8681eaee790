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
]

METRICS: dict[str, Metric] = {m.name: m for m in _METRICS}


def unit(name: str) -> str:
    return METRICS[name].unit if name in METRICS else ""
