"""Hugging Face transformers backend with the eager (plain PyTorch matmul + softmax) attention.

Decoding is an explicit greedy KV-cache loop (one prefill forward, then one forward per token with
the cache), in the spirit of gpt-fast's generate.py: what is timed is the model, not
`model.generate`'s logits processors and stopping criteria. The `kv_cache` option swaps the cache
(none, or a quantized one: backends/hf/kvcache.py); the default path is the loop above.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from pydantic import Field

from backends.base import Backend, BackendDescription, BackendOptions, TokenBatch, require
from backends.hf import attention, kvcache
from backends.hf.attention import Attention
from bench.core.description import AttentionInfo, KVCacheInfo


class HFOptions(BackendOptions):
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    compile: bool = False  # torch.compile the forward (mode="default")
    quantization: Literal["none", "torch-dynamic-int8", "torchao-int8-weight", "torchao-int8-dynamic",
                          "torchao-int4-weight", "bnb-int8", "bnb-nf4", "torchao-float8-weight",
                          "torchao-float8-dynamic", "quanto-int8", "quanto-int4", "quanto-float8",
                          "gptq-w4a16", "awq-w4a16"] = "none"  # see backends/hf/quant.py
    kv_cache: kvcache.KVCache = "dynamic"  # see backends/hf/kvcache.py
    kv_residual_length: int = Field(128, ge=1, description="quanto KV cache: newest tokens kept in full precision")
    attention: Attention | None = Field(None, description="attention kernel (backends/hf/attention.py); default: "
                                        "the backend's own (hf-eager: eager, bettertransformer: sdpa)")


class HFEager(Backend):
    name = "hf-eager"
    extra = "hf"
    Options = HFOptions
    options: HFOptions
    attn_implementation = "eager"
    profiles_with_torch = True  # bench.measure.profiling traces it with torch.profiler

    def mechanism(self) -> str:
        return "transformers attn_implementation='eager' (explicit matmul + softmax attention)"

    def load(self, model_path: str) -> None:
        torch = require("torch", self.extra, self.name)
        transformers = require("transformers", self.extra, self.name)
        self.model_path = model_path
        self._torch = torch
        torch.set_num_threads(self.threads)
        self._kernel = self.options.attention or {"eager": "eager", "sdpa": "sdpa"}[self.attn_implementation]
        attention.check_supported(self._kernel, self.device, self.options.dtype, self.name)
        self._attention = attention.forcing(self._kernel)
        if self._kernel == "flex":
            attention.label_flex(torch)
        self._attention_verdict: AttentionInfo | None = None
        from backends.hf.quant import Loader, grad_mode, load_quantized

        def load(path: str, **kwargs):
            return transformers.AutoModelForCausalLM.from_pretrained(
                path, dtype=getattr(torch, self.options.dtype),
                attn_implementation=attention.kernel(self._kernel).attn_implementation,
                **kwargs)

        self.model = load_quantized(self.options.quantization, Loader(model_path, load), self.device, self.name).eval()
        self._forward = torch.compile(self.model) if self.options.compile else self.model
        self._cache_arg = kvcache.cache_argument(self.model)
        self._grad = grad_mode(self.options.quantization, torch)
        self._kv_measured: dict = {}

    def _new_cache(self):
        return kvcache.new_cache(self.options.kv_cache, self.model.config, self.options.kv_residual_length, self.name)

    def _argmax_next(self, logits):
        return logits[:, -1, :].argmax(dim=-1, keepdim=True)

    def generate(self, batch: TokenBatch, new_tokens: int, on_token: Callable[[], None]) -> TokenBatch:
        torch = self._torch
        if self.options.kv_cache == "off":
            with self._grad(), self._attention():
                ids = torch.tensor(batch, device=self.device)
                return kvcache.decode_without_cache(self._forward, torch, ids, new_tokens, on_token)
        quantized_cache = self._new_cache()
        with self._grad(), self._attention():
            out = self._forward(input_ids=torch.tensor(batch, device=self.device), use_cache=True, logits_to_keep=1,
                                **({self._cache_arg: quantized_cache} if quantized_cache is not None else {}))
            token = self._argmax_next(out.logits)
            on_token()
            produced = [token]
            cache = getattr(out, self._cache_arg)
            for _ in range(new_tokens - 1):
                out = self._forward(input_ids=token, use_cache=True, **{self._cache_arg: cache})
                token = self._argmax_next(out.logits)
                on_token()
                produced.append(token)
                cache = getattr(out, self._cache_arg)
            self._kv_measured = {**kvcache.cache_bytes(cache), "sequences": len(batch)}  # after the last mark
            return torch.cat(produced, dim=1).tolist()

    def token_logits(self, ids: list[int]):
        torch = self._torch
        with self._grad(), self._attention():
            if self.options.kv_cache in kvcache.QUANTIZED:  # what attention reads back: decode through the cache
                logits = kvcache.logits_through_cache(self._forward, torch, torch.tensor([ids], device=self.device),
                                                      self._new_cache(), self._cache_arg)
            else:
                logits = self._forward(input_ids=torch.tensor([ids], device=self.device)).logits[0]
            return logits.float().cpu().numpy()

    def describe(self) -> BackendDescription:
        from backends.hf.quant import n_parameters, stored_bytes
        from backends.safetensors_header import stored_tensors

        torch, model = self._torch, self.model
        quantization, kv = self.options.quantization, self.options.kv_cache
        if self._attention_verdict is None:  # after the task: which attention kernel ran, from a short profile
            self._attention_verdict = attention.verify(self._kernel, self.device, torch, self._forward, self._cache_arg,
                                                       [self._grad, self._attention])
        checkpoint = getattr(model, "bench_checkpoint", None)  # llm-compressor variants (hf/quant.py)
        details: dict = {"attn_implementation": model.config._attn_implementation,
                         "decode_loop": "bench greedy KV-cache loop (prefill forward, then one forward per token)"
                         if kv != "off" else "bench greedy loop without a cache: a full forward over the whole "
                         "sequence per token (use_cache=False)"}
        cache = KVCacheInfo(kind=kv, element_bits=kvcache.element_bits(
            kv, torch.finfo(getattr(torch, self.options.dtype)).bits), **self._kv_measured)
        if kv in kvcache.QUANTIZED:
            cache.residual_length = self.options.kv_residual_length if kv != "fp8" else 0
            details["perplexity_logits"] = "each window's first half as the prefill, the rest decoded one token at " \
                                           "a time through the quantized cache"
        if checkpoint is not None:
            details.update(checkpoint.details(), runtime_weight_bytes=stored_bytes(model),
                           runtime="compressed-tensors decompresses the weights to the backend's dtype on the "
                                   "first forward (transformers has no CPU int4 kernel for it)")
        return BackendDescription(
            mechanism=self.mechanism() + (" + torch.compile" if self.options.compile else "")
            + (f" + {quantization} weights" if quantization != "none" else "")
            + (f" + kv_cache={kv}" if kv != "dynamic" else "")
            + (f" + attention={self._kernel}" if self.options.attention else ""),
            dtype=str(next(model.parameters()).dtype).replace("torch.", ""),
            device=self.device,
            threads=torch.get_num_threads(),
            # quantized tensors counted as stored (hf/quant.py); a checkpoint's as loaded, before decompression
            model_size_bytes=getattr(model, "bench_stored_bytes", None) or stored_bytes(model),
            # a checkpoint's packed weights and scales stand for the source model's weights
            n_parameters=sum(t.numel for t in stored_tensors(checkpoint.manifest["source"])) if checkpoint is not None
            else n_parameters(model),
            quantization=None if quantization == "none" else quantization,
            versions={"torch": torch.__version__,
                      "transformers": require("transformers", self.extra, self.name).__version__},
            kv_cache=cache,
            attention=self._attention_verdict,
            details=details,
        )

    def close(self) -> None:
        self.model = self._forward = None
