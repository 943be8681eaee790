"""Every number bench reports, defined once: name, unit, kind, direction, gate, display, meaning.

Reports build their columns and glossary from this table, `bench compare` reads from it which
metrics it checks and how, and the record loader accepts only names registered here. Add a metric
by adding one `Metric` below (and computing it in bench/measure/).

Kinds:
- `sampled`: one value per repetition, raw samples kept; recorded as a Summary (median and CI);
  the gate compares the samples (rank test + bootstrap CI of the ratio of medians).
- `throughput`: total work / total time over the repetitions (never a mean of rates); the gate
  rebuilds it per repetition from the raw samples.
- `scalar`: one deterministic number per case (quality, memory); the gate compares it with the
  threshold (bytes also need an absolute change of `min_change`).
- `timing`: one timing without repetitions (load time, evaluation speed): shown, never gated.
- `info`: bookkeeping that explains other numbers (counts, baselines); shown in the glossary only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["sampled", "throughput", "scalar", "timing", "info"]
MIB = 1024 * 1024


@dataclass(frozen=True)
class Metric:
    name: str
    label: str  # short human name for table headers ("TTFT", "peak RSS")
    unit: str  # unit of the recorded value
    kind: Kind
    better: Literal["lower", "higher"] | None
    definition: str
    shown_unit: str | None = None  # unit in reports when it differs from `unit` (bytes -> MiB)
    scale: float = 1.0  # recorded value x scale = shown value
    digits: int = 4  # significant digits shown
    min_change: float = 0.0  # smallest absolute change (in `unit`) the gate can call a regression

    @property
    def gated(self) -> bool:
        """Whether `bench compare` can call a change of this metric a regression."""
        return self.kind in ("sampled", "throughput", "scalar")

    @property
    def display_unit(self) -> str:
        return self.unit if self.shown_unit is None else self.shown_unit

    @property
    def header(self) -> str:
        """Column header: label and shown unit ("TTFT ms", "peak RSS MiB"); fractions and counts bare."""
        unit = self.display_unit
        return f"{self.label} {unit}" if unit and unit not in ("fraction", "count") else self.label

    def shown(self, value: float | None) -> float | None:
        return None if value is None else value * self.scale


def _bytes(name: str, label: str, kind: Kind, definition: str) -> Metric:
    return Metric(name, label, "bytes", kind, "lower", definition, shown_unit="MiB", scale=1 / MIB, min_change=MIB)


_METRICS = [
    # latency and throughput of generation (bench/measure/latency.py)
    Metric("ttft_ms", "TTFT", "ms", "sampled", "lower",
           "Time to first token: from the call that submits the prompt batch until the first new token of every "
           "sequence is available on the host (prefill plus one sampling step)."),
    Metric("tpot_ms", "TPOT", "ms", "sampled", "lower",
           "Time per output token after the first: (end-to-end time - TTFT) / (new tokens - 1), one sample per "
           "repetition."),
    Metric("itl_ms", "ITL", "ms", "sampled", "lower",
           "Inter-token latency: every gap between consecutive new-token timestamps, pooled over repetitions (its "
           "distribution, not only its centre)."),
    Metric("e2e_ms", "e2e", "ms", "sampled", "lower",
           "End-to-end latency: from submitting the prompt batch until the last new token is available."),
    Metric("prefill_tok_s", "prefill", "tok/s", "throughput", "higher",
           "Prefill throughput: sum of prompt tokens (batch size x prompt length) over all measured repetitions "
           "divided by the sum of their TTFTs."),
    Metric("decode_tok_s", "decode", "tok/s", "throughput", "higher",
           "Decode throughput: sum of tokens generated after the first (batch size x (new tokens - 1)) over all "
           "measured repetitions divided by the sum of their decode times (e2e - TTFT)."),
    Metric("ttft_vs_reference", "TTFT vs reference", "ratio", "info", "lower",
           "TTFT of the variant over the reference's on the same model and workload, from the rounds both measured "
           "interleaved: per round the ratio of their medians; the median of those ratios with a bootstrap interval "
           "over processes, then rounds. Drift that outlasts a round cancels in each ratio. `bench compare RUN` "
           "gates on it."),
    Metric("tpot_vs_reference", "TPOT vs reference", "ratio", "info", "lower",
           "TPOT of the variant over the reference's, from paired interleaved rounds (as ttft_vs_reference)."),
    *(Metric(f"{m}_vs_reference_model", f"{m.upper()} vs reference model", "ratio", "info", "lower",
             f"{m.upper()} of the case over the same variant's on the suite's `reference_model`, same workload, from "
             f"the rounds both measured (a suite with `interleave: models` measures a workload's models in the same "
             f"rounds), computed as {m}_vs_reference. A comparison of models, never gated.") for m in ("ttft", "tpot")),
    Metric("load_s", "load", "s", "timing", "lower",
           "Load time: from the start of the backend's load call until the model is ready to run (weights read, "
           "moved to device, any conversion or compilation done eagerly)."),
    Metric("conversion_s", "conversion", "s", "timing", "lower",
           "Conversion time: wall time of the conversion that made the files the backend ran (ONNX or OpenVINO "
           "export, GGUF conversion and quantization), measured when they were built and kept with them, so a case "
           "that found them cached reports what making them cost; not part of load_s."),
    _bytes("conversion_peak_rss_bytes", "conversion peak RSS", "timing",
           "Peak RSS of the conversion's process: the kernel's high-water mark (VmHWM) of the child Python process "
           "that converted, read just before it exited (backends/cached_build.py run_python)."),
    # memory (bench/measure/memory.py)
    _bytes("peak_rss_bytes", "peak RSS", "scalar",
           "Peak resident set size of the case: the larger of the kernel's high-water mark of the case's process "
           "since its exec (VmHWM) and the largest sampled memory of its process tree (the case's process plus any "
           "it started: their summed PSS, so pages a forked child shares with its parent count once; see "
           "bench/measure/memory.py). Includes the interpreter and libraries, never the runner's memory."),
    _bytes("peak_rss_delta_bytes", "peak RSS delta", "scalar",
           "Peak RSS minus the RSS measured just before the model was loaded: memory the model and its runtime added."),
    _bytes("peak_rss_sampled_bytes", "sampled peak RSS", "info",
           "Largest memory of the case's process tree the sampler saw: its RSS while it is one process, the summed PSS "
           "(proportional set size) of its processes while it has more."),
    _bytes("vm_hwm_bytes", "VmHWM", "info",
           "The kernel's RSS high-water mark of the case's process since its exec (/proc/self/status VmHWM)."),
    _bytes("ru_maxrss_bytes", "ru_maxrss", "info",
           "getrusage ru_maxrss (format-1 runs only: it carries over a large parent's peak across fork+exec)."),
    Metric("processes_sampled", "processes", "count", "info", None,
           "Most processes in the case's process tree at one sample (1: the case's own process only)."),
    _bytes("baseline_rss_bytes", "baseline RSS", "info", "RSS of the case's process just before the model was loaded."),
    _bytes("cuda_max_allocated_bytes", "CUDA allocated", "scalar",
           "torch.cuda.max_memory_allocated() over the case: peak bytes held by tensors."),
    _bytes("cuda_max_reserved_bytes", "CUDA reserved", "scalar",
           "torch.cuda.max_memory_reserved() over the case: peak bytes held by the caching allocator."),
    _bytes("nvml_peak_process_bytes", "GPU memory (NVML)", "scalar",
           "Peak GPU memory NVML reports for the case's process (includes the CUDA context), sampled."),
    _bytes("model_size_bytes", "weights", "scalar",
           "Bytes of model weights as loaded by the backend (parameters and buffers, or the file size for "
           "file-based formats)."),
    # perplexity (bench/measure/perplexity.py)
    Metric("perplexity", "perplexity", "", "scalar", "lower",
           "exp(mean negative log-likelihood) of the evaluation tokens under a sliding window: windows of `window` "
           "tokens advanced by `stride`; each token is scored once, with up to window-1 tokens of context. The same "
           "token ids are used for every backend.", digits=6),
    Metric("nll_mean", "NLL", "nats/token", "scalar", "lower", "Mean negative log-likelihood of the scored tokens.",
           digits=6),
    Metric("nll_sum", "NLL sum", "nats", "info", None, "Sum of the negative log-likelihoods of the scored tokens."),
    Metric("eval_tok_s", "eval", "tok/s", "timing", "higher",
           "Perplexity evaluation throughput: tokens fed through the model (all window tokens) divided by the time "
           "spent in the backend's logits calls."),
    Metric("logits_seconds", "logits time", "s", "info", None,
           "Time spent in the backend's logits calls during the perplexity evaluation."),
    # quality against the reference variant (bench/measure/quality.py): same token ids, windows and positions
    Metric("kld_mean", "KLD mean", "nats", "scalar", "lower",
           "Mean over scored positions of KL(reference || variant) of the next-token distributions, both taken as "
           "float32 log-probabilities renormalized in float64; exactly 0 for the reference itself."),
    Metric("kld_p99", "KLD p99", "nats", "scalar", "lower",
           "99th percentile over scored positions of the per-position KL(reference || variant)."),
    Metric("kld_max", "KLD max", "nats", "scalar", "lower", "Largest per-position KL(reference || variant)."),
    Metric("top1_agreement", "top-1 agree", "fraction", "scalar", "higher",
           "Share of scored positions where the variant's most likely next token is the reference's."),
    Metric("delta_nll", "Δ NLL", "nats/token", "scalar", "lower",
           "Mean over scored positions of the paired NLL difference (variant - reference), with its 95 % CI."),
    Metric("delta_ppl", "Δ PPL", "", "scalar", "lower",
           "Perplexity of the variant minus the reference's, PPL_ref x (exp(delta_nll) - 1), with the 95 % CI "
           "carried over from delta_nll's (paired: the reference's PPL held fixed)."),
    # memory-bandwidth utilization of decoding (bench/measure/bandwidth.py)
    Metric("achieved_bandwidth_gbs", "weights", "GB/s", "timing", "higher",
           "model_size_bytes / median TPOT, in 1e9 bytes/s: each decode step reads every weight once, so this is the "
           "weight traffic per step (KV-cache and activation traffic not counted)."),
    Metric("mbu", "MBU", "fraction", "timing", "higher",
           "Memory-bandwidth utilization: achieved_bandwidth_gbs / peak_memory_bandwidth_gbs (derived from the "
           "median TPOT, which is gated itself)."),
    Metric("peak_memory_bandwidth_gbs", "peak bandwidth", "GB/s", "info", "higher",
           "The device's peak memory bandwidth MBU is relative to: the suite's peak_memory_bandwidth_gbs when "
           "stated, else the spec sheet of a known GPU (table in bench/measure/bandwidth.py); with "
           "`peak_memory_bandwidth_gbs: measured`, the host's copy bandwidth measured in the case's process (best of 5 "
           "one-thread numpy copies of 256 MiB, 2 bytes moved per byte copied)."),
    # the KV cache of a latency case (bench/measure/kvcache.py): computed from the model's config, and measured
    Metric("kv_cache_bytes_per_token", "KV/token computed", "bytes/token", "info", "lower",
           "KV cache bytes per token per sequence computed from the model's config: 2 (keys and values) x layers x "
           "KV heads x head dim x the cache's nominal bits per element / 8 (32 for float32, 4 for an int4 cache; "
           "scales and any full-precision residual not counted)."),
    Metric("kv_cache_measured_bytes_per_token", "KV/token measured", "bytes/token", "scalar", "lower",
           "KV cache bytes per token per sequence the backend held after its last generation: the bytes of every "
           "tensor of the cache (quantized data, scales, full-precision residual; llama.cpp: its serialized sequence "
           "state, cell metadata included) divided by the cached tokens (prompt + new tokens - 1) and sequences."),
    # profiles of profiled latency cases ("Where the time goes"; bench/measure/profiling.py), taken after measuring
    Metric("op_self_time_us", "self time", "µs", "info", "lower",
           "Self time of an operator over the profiled generations: time inside it, excluding operators it called, "
           "summed over its calls (CPU, and device where traced). Shares are fractions of the summed self time of "
           "all operators; categories (attention / matmul / other) go by operator name."),
    # serving: one load level of a real server (bench/serving/); per request, then per level
    Metric("serve_ttft_ms", "TTFT", "ms", "sampled", "lower",
           "Serving time to first token: from the request's actual send until the first streamed chunk that carries "
           "content (text, or a chat delta's content), one sample per successful request."),
    Metric("serve_tpot_ms", "TPOT", "ms", "sampled", "lower",
           "Serving time per output token: (e2e - TTFT) / (output tokens - 1) per successful request, output tokens "
           "counted with the model's tokenizer."),
    Metric("serve_itl_ms", "ITL", "ms", "sampled", "lower",
           "Serving inter-token latency: every gap between consecutive content chunks, pooled over the level's "
           "requests (a chunk may carry more than one token; serve_tokens_per_chunk says how many on average)."),
    Metric("serve_e2e_ms", "e2e", "ms", "sampled", "lower",
           "Serving end-to-end latency: from the request's actual send until its last chunk (or the end of the "
           "stream), per successful request."),
    Metric("serve_ttft_sched_ms", "TTFT from schedule", "ms", "sampled", "lower",
           "Open loop: time to first token measured from the request's scheduled send time (what a user arriving "
           "then waits; corrects coordinated omission). Closed loop: equal to serve_ttft_ms."),
    Metric("serve_e2e_sched_ms", "e2e from schedule", "ms", "sampled", "lower",
           "Open loop: end-to-end latency from the scheduled send time (corrects coordinated omission)."),
    Metric("serve_schedule_lag_ms", "schedule lag", "ms", "info", "lower",
           "Open loop: how far behind its schedule each request was sent (actual - scheduled send time), every "
           "request sent; includes waiting for a free slot under a concurrency ceiling. A property of the client "
           "and the schedule, so shown but never gated."),
    Metric("serve_request_rps", "throughput", "req/s", "throughput", "higher",
           "Request throughput: successful requests / the level's duration (first send to last answer)."),
    Metric("serve_output_tok_s", "output", "tok/s", "throughput", "higher",
           "Output token throughput: output tokens of the successful requests / the level's duration."),
    Metric("serve_total_tok_s", "total", "tok/s", "throughput", "higher",
           "Total token throughput: input + output tokens of the successful requests / the level's duration."),
    Metric("serve_tok_s_per_user", "per user", "tok/s", "sampled", "higher",
           "Tokens per second one user sees: a request's output tokens / its e2e latency, per successful request."),
    Metric("serve_goodput_rps", "goodput", "req/s", "throughput", "higher",
           "Goodput: successful requests that met every SLO the suite states (serving.slo) / the level's duration; "
           "equal to serve_request_rps when no SLO is stated."),
    Metric("serve_slo_fraction", "SLO met", "fraction", "scalar", "higher",
           "Share of the level's sent requests that succeeded and met every stated SLO."),
    Metric("serve_error_rate", "errors", "fraction", "scalar", "lower",
           "Share of the level's sent requests that failed (any kind: connection, HTTP status, not SSE, malformed "
           "chunk, timeout, disconnect, server crash); counts by kind are in the level's errors."),
    Metric("serve_offered_rps", "offered", "req/s", "info", None,
           "Open loop: the rate the level's arrival schedule asked for (requests / scheduled span)."),
    Metric("serve_duration_s", "duration", "s", "info", None,
           "The level's duration: from its first send to its last answer (the denominator of its throughputs)."),
    Metric("serve_requests", "requests", "count", "info", None, "Requests the level sent."),
    Metric("serve_ok_requests", "ok", "count", "info", None, "Requests that succeeded."),
    Metric("serve_input_tokens", "input tokens", "count", "info", None,
           "Prompt tokens of the successful requests, counted with the model's tokenizer on the text sent."),
    Metric("serve_output_tokens", "output tokens", "count", "info", None,
           "Generated tokens of the successful requests, as the server counts them: its usage, else max_tokens "
           "when it stopped on length, else one per chunk for a server that streams one token per chunk; else the "
           "streamed text re-tokenized with the model's tokenizer (which is also the cross-check)."),
    Metric("serve_tokens_per_chunk", "tokens/chunk", "", "info", None,
           "Output tokens / content chunks over the successful requests (1: one token per SSE event)."),
    Metric("serve_usage_mismatches", "usage mismatches", "count", "info", None,
           "Successful requests whose server-reported usage (prompt or completion tokens) differs from bench's "
           "count with the model's tokenizer; requests without usage are not counted."),
    _bytes("serve_server_rss_bytes", "server RSS", "scalar",
           "Peak resident memory of the server's process tree during the level (psutil, sampled every 50 ms)."),
    Metric("serve_client_cpu", "client CPU", "fraction", "info", "lower",
           "CPU time the client process used during the level / the level's wall time (1.0 = one core busy)."),
    Metric("serve_client_max_rps", "client max", "req/s", "info", "higher",
           "Self-check: requests per second of client CPU time against the stub server (the rate at which the "
           "client alone would keep one core busy), with this level's output length."),
    Metric("serve_prefix_cache_hit_rate", "prefix-cache hits", "fraction", "info", "higher",
           "Share of the prompt tokens the server looked up in its prefix cache during the level that it found "
           "there, from the server's own counters (vLLM /metrics: increase of prefix_cache_hits over increase of "
           "prefix_cache_queries); only servers that expose them."),
    Metric("serve_ready_s", "ready", "s", "timing", "lower",
           "Server start: from launching its process until its readiness endpoint answered 200."),
    # energy per token where a counter exists (bench/measure/energy.py): measured after the latency repetitions
    Metric("energy_prefill_j_per_token", "prefill energy", "J/token", "timing", "lower",
           "Energy per prompt token of prefill: the energy counters' (NVML per GPU, RAPL per CPU package) joules over "
           "repeated generate(prompt, 1 token) calls, minus the idle power x their time, per call, divided by batch "
           "size x prompt length. Measured once after the latency repetitions: shown, never gated."),
    Metric("energy_decode_j_per_token", "decode energy", "J/token", "timing", "lower",
           "Energy per token generated after the first: (joules of a whole generation - joules of a prefill call), "
           "both above idle, divided by batch size x (new tokens - 1)."),
    Metric("energy_prefill_tok_per_j", "prefill tok/J", "tok/J", "timing", "higher",
           "Prompt tokens per joule of prefill: 1 / energy_prefill_j_per_token."),
    Metric("energy_decode_tok_per_j", "decode tok/J", "tok/J", "timing", "higher",
           "Generated tokens per joule of decode: 1 / energy_decode_j_per_token."),
    Metric("energy_idle_w", "idle power", "W", "info", None,
           "The idle baseline subtracted from the energy figures: the counters' joules over a second of sleep in the "
           "case's process (model loaded), divided by that time, summed over the counters."),
    Metric("profile_step_ms", "profiled step", "ms", "info", "lower",
           "Wall time of one generation under the profiler (mean over the profiled steps), split into prefill (until "
           "the first token) and decode; the profiler's overhead is included."),
]

METRICS: dict[str, Metric] = {m.name: m for m in _METRICS}


# Groups of the table's names that code iterates over (checked against the table below)
LATENCY_SAMPLES = ("ttft_ms", "tpot_ms", "e2e_ms", "itl_ms")  # per repetition of a generation (measure/latency.py)
THROUGHPUTS = ("prefill_tok_s", "decode_tok_s")  # total tokens / total time over the repetitions
PRECISION_METRICS = ("ttft_ms", "tpot_ms")  # the medians the stop rule makes precise (measure/policy.py)
PAIRED = {"ttft_ms": "ttft_vs_reference", "tpot_ms": "tpot_vs_reference"}  # ratio to the reference, paired rounds
# ratio to the same variant on the reference model, paired rounds (`interleave: models`)
PAIRED_MODEL = {"ttft_ms": "ttft_vs_reference_model", "tpot_ms": "tpot_vs_reference_model"}
assert all(name in METRICS for name in (*LATENCY_SAMPLES, *THROUGHPUTS, *PAIRED, *PAIRED.values(),
                                        *PAIRED_MODEL.values()))


def unit(name: str) -> str:
    return METRICS[name].unit if name in METRICS else ""


def gated() -> list[Metric]:
    return [m for m in METRICS.values() if m.gated]
