"""The KV cache's bytes per token: computed from the model's config, and measured on what the backend held.

Computed: 2 (keys, values) x layers x KV heads x head dim x bits / 8, with the layout read from the
model directory's config.json (recorded on the description as `attention_shape`, so the report shows the
heads and window the number came from without re-reading the model) and `bits` the nominal bits per
element of the cache the backend used (`description.kv_cache.element_bits`: 32 for a float32 cache, 16
for llama.cpp's default f16, 4 for an int4 quantized one). Measured: the backend's own count after its
last generation (`description.kv_cache`: bytes held, cached tokens, sequences). The two agree for a
plain cache; a quantized cache adds scales and keeps a full-precision residual, which the measured
number shows and the computed one leaves out.
"""
from __future__ import annotations

import json
from pathlib import Path

from bench.core.description import AttentionShape, BackendDescription
from bench.records.schema import MetricValue


def attention_shape(model_path: str) -> AttentionShape | None:
    """The attention layout of the model directory's config.json; None without one or without a layout."""
    config_file = Path(model_path) / "config.json"
    return AttentionShape.from_config(json.loads(config_file.read_text())) if config_file.is_file() else None


def computed_bytes_per_token(shape: AttentionShape, element_bits: float) -> float:
    return 2 * shape.layers * shape.kv_heads * shape.head_dim * element_bits / 8


def metrics(model_path: str, description: BackendDescription) -> dict[str, MetricValue]:
    """kv_cache_bytes_per_token and kv_cache_measured_bytes_per_token, for those the backend reported.

    Also records the model's attention shape on `description.attention_shape` (what the computed number uses)."""
    description.attention_shape = attention_shape(model_path)
    kv, shape = description.kv_cache, description.attention_shape
    out: dict[str, MetricValue] = {}
    if kv is None:
        return out
    if kv.element_bits and shape is not None:
        out["kv_cache_bytes_per_token"] = computed_bytes_per_token(shape, kv.element_bits)
    if kv.bytes and kv.tokens:
        out["kv_cache_measured_bytes_per_token"] = kv.bytes / (kv.tokens * (kv.sequences or 1))
    return out
