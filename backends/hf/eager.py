"""Hugging Face transformers backend with the eager (plain PyTorch matmul + softmax) attention.

Decoding is an explicit greedy KV-cache loop (one prefill forward, then one forward per token with
the cache), in the spirit of gpt-fast's generate.py: what is timed is the model, not
`model.generate`'s logits processors and stopping criteria.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Literal

from backends.base import Backend, BackendDescription, BackendOptions, TokenBatch, require


class HFOptions(BackendOptions):
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    compile: bool = False  # torch.compile the forward (mode="default")
    quantization: Literal["none", "torch-dynamic-int8", "torchao-int8-weight", "torchao-int8-dynamic",
                          "torchao-int4-weight", "bnb-int8", "bnb-nf4"] = "none"  # see backends/hf/quant.py


class HFEager(Backend):
    name = "hf-eager"
    extra = "hf"
    Options = HFOptions
    options: HFOptions
    attn_implementation = "eager"
    profiles_with_torch = True  # bench.profiling traces it with torch.profiler

    def mechanism(self) -> str:
        return "transformers attn_implementation='eager' (explicit matmul + softmax attention)"

    def load(self, model_path: str) -> None:
        torch = require("torch", self.extra, self.name)
        transformers = require("transformers", self.extra, self.name)
        self.model_path = model_path
        self._torch = torch
        torch.set_num_threads(self.threads)
        from backends.hf.quant import load_quantized

        def load(**kwargs):
            return transformers.AutoModelForCausalLM.from_pretrained(
                model_path, dtype=getattr(torch, self.options.dtype), attn_implementation=self.attn_implementation,
                **kwargs)

        self.model = load_quantized(self.options.quantization, load, self.device, self.name).eval()
        self._forward = torch.compile(self.model) if self.options.compile else self.model
        # transformers 5.24 renamed forward's `past_key_values` to `cache` (the old name warns, and goes in 5.40);
        # earlier 5.x releases (the GPU image has 5.17) know only `past_key_values`
        self._cache_arg = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"

    def _argmax_next(self, logits):
        return logits[:, -1, :].argmax(dim=-1, keepdim=True)

    def generate(self, batch: TokenBatch, new_tokens: int, on_token: Callable[[], None]) -> TokenBatch:
        torch = self._torch
        with torch.inference_mode():
            out = self._forward(input_ids=torch.tensor(batch, device=self.device), use_cache=True, logits_to_keep=1)
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
            return torch.cat(produced, dim=1).tolist()

    def token_logits(self, ids: list[int]):
        torch = self._torch
        with torch.inference_mode():
            logits = self._forward(input_ids=torch.tensor([ids], device=self.device)).logits[0]
            return logits.float().cpu().numpy()

    def describe(self) -> BackendDescription:
        from backends.hf.quant import n_parameters, stored_bytes

        torch, model = self._torch, self.model
        quantization = self.options.quantization
        return BackendDescription(
            mechanism=self.mechanism() + (" + torch.compile" if self.options.compile else "")
            + (f" + {quantization} weights" if quantization != "none" else ""),
            dtype=str(next(model.parameters()).dtype).replace("torch.", ""),
            device=self.device,
            threads=torch.get_num_threads(),
            model_size_bytes=stored_bytes(model),  # quantized tensors counted as stored (hf/quant.py)
            n_parameters=n_parameters(model),
            quantization=None if quantization == "none" else quantization,
            versions={"torch": torch.__version__,
                      "transformers": require("transformers", self.extra, self.name).__version__},
            details={"attn_implementation": model.config._attn_implementation,
                     "decode_loop": "bench greedy KV-cache loop (prefill forward, then one forward per token)"},
        )

    def close(self) -> None:
        self.model = self._forward = None
