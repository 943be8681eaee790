"""The KV cache's bytes per token: computed from the model's config, and measured on what the backend held.

Computed: 2 (keys, values) x num_hidden_layers x num_key_value_heads x head_dim x bits / 8, with the
layout read from the model directory's config.json and `bits` the nominal bits per element of the
cache the backend used (its description's `details["kv_cache"]["element_bits"]`: 32 for a float32
cache, 16 for llama.cpp's default f16, 4 for an int4 quantized one). Measured: the backend's own
count after its last generation (`details["kv_cache"]`: bytes held, cached tokens, sequences). The
two agree for a plain cache; a quantized cache adds scales and keeps a full-precision residual, which
the measured number shows and the computed one leaves out.
"""
from __future__ import annotations

import json
from pathlib import Path

from bench.core.description import BackendDescription
from bench.records.schema import MetricValue


def layout(config: dict) -> tuple[int, int, int]:
    """(layers, KV heads, head dim) of a decoder's config.json."""
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    return config["num_hidden_layers"], config.get("num_key_value_heads") or heads, head_dim


def computed_bytes_per_token(config: dict, element_bits: float) -> float:
    layers, kv_heads, head_dim = layout(config)
    return 2 * layers * kv_heads * head_dim * element_bits / 8


def metrics(model_path: str, description: BackendDescription) -> dict[str, MetricValue]:
    """kv_cache_bytes_per_token and kv_cache_measured_bytes_per_token, for those the backend reported."""
    kv = description.details.get("kv_cache") or {}
    out: dict[str, MetricValue] = {}
    config_file = Path(model_path) / "config.json"
    if kv.get("element_bits") and config_file.is_file():
        config = json.loads(config_file.read_text())
        config = config.get("text_config", config)
        out["kv_cache_bytes_per_token"] = computed_bytes_per_token(config, kv["element_bits"])
    if kv.get("bytes") and kv.get("tokens"):
        out["kv_cache_measured_bytes_per_token"] = kv["bytes"] / (kv["tokens"] * (kv.get("sequences") or 1))
    return out
