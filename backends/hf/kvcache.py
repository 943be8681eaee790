"""The KV cache options of the HF backends: the default cache, no cache at all, or a quantized one.

`kv_cache` (an HF backend option):
- `dynamic` (default): transformers' DynamicCache in the model's dtype, bench's usual loop.
- `off`: no cache. Every decode step is a full forward over the prompt and every token generated so
  far (`use_cache=False`): what the cache saves, measured as a variant. Logits are unchanged.
- `quanto-int4`, `quanto-int2`: transformers' QuantizedCache with the optimum-quanto backend (KIVI-style:
  keys and values quantized per channel in groups of 64, with a float scale and shift per group; the
  newest `kv_residual_length` tokens, 128 by default, stay in full precision until they are flushed
  into the quantized part). Needs optimum-quanto (extra `quanto`).
- `fp8`: transformers' QuantizedCache with its fp8 backend: float8 e4m3 keys and values with one
  scale per tensor, frozen at the prefill (no residual).

A quantized cache changes only what attention reads back from the cache, never a single forward over
a whole sequence (transformers quantizes a layer's first update but attends with the exact states).
So for these options `token_logits` decodes through the cache: each window's first half is the
prefill, and the rest is fed one token at a time, as decoding does.

`cache_bytes(cache)` measures what a cache holds: every tensor it keeps (quantized data, scales,
shifts, the full-precision residual) and the tokens it covers.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Literal

from backends.base import require
from backends.hf.quant import tensor_bytes

KVCache = Literal["dynamic", "off", "quanto-int4", "quanto-int2", "fp8"]
QUANTIZED: dict[str, tuple[str, int]] = {"quanto-int4": ("quanto", 4), "quanto-int2": ("quanto", 2), "fp8": ("fp8", 8)}


def cache_argument(model) -> str:
    """The name forward takes a cache under: `cache` from transformers 5.24 (`past_key_values` then warns), else
    `past_key_values` (earlier 5.x releases, such as the GPU image's 5.17, know only that one)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def new_cache(kind: str, config, residual_length: int, backend: str) -> Any:
    """A fresh quantized cache for `kind`, or None for transformers' default (dynamic) cache."""
    if kind not in QUANTIZED:
        return None
    transformers = require("transformers", "hf", backend)
    quant_backend, nbits = QUANTIZED[kind]
    if quant_backend == "fp8":
        return transformers.QuantizedCache(backend="fp8", config=config)
    require("optimum.quanto", "quanto", backend)
    return transformers.QuantizedCache(backend=quant_backend, config=config, nbits=nbits,
                                       residual_length=residual_length)


def element_bits(kind: str, dtype_bits: int) -> int | None:
    """Nominal bits per cached key/value element (no scales): None when nothing is cached."""
    if kind == "off":
        return None
    return QUANTIZED[kind][1] if kind in QUANTIZED else dtype_bits


def cache_bytes(cache) -> dict:
    """{"bytes", "tokens"}: every tensor a transformers cache holds after a generation, and its length."""
    seen: set = set()
    held = [getattr(layer, name, None) for layer in getattr(cache, "layers", [])
            for name in ("keys", "values", "_quantized_keys", "_quantized_values")]
    return {"bytes": sum(tensor_bytes(value, seen) for value in held if value is not None),
            "tokens": int(cache.get_seq_length())}


def decode_without_cache(forward: Callable, torch, ids, new_tokens: int, on_token: Callable[[], None]) -> list:
    """Greedy decode with a full forward over the whole sequence per token (use_cache=False)."""
    prompt_len = ids.shape[1]
    for _ in range(new_tokens):
        logits = forward(input_ids=ids, use_cache=False, logits_to_keep=1).logits
        token = logits[:, -1, :].argmax(dim=-1, keepdim=True)
        on_token()
        ids = torch.cat([ids, token], dim=1)
    return ids[:, prompt_len:].tolist()


def logits_through_cache(forward: Callable, torch, ids, cache, cache_arg: str) -> Any:
    """Logits [len, vocab] of one sequence whose first half is the prefill and the rest decoded one by one."""
    prefill = max(1, ids.shape[1] // 2)
    rows = [forward(input_ids=ids[:, :prefill], use_cache=True, **{cache_arg: cache}).logits[0]]
    for position in range(prefill, ids.shape[1]):
        rows.append(forward(input_ids=ids[:, position:position + 1], use_cache=True, **{cache_arg: cache}).logits[0])
    return torch.cat(rows)
