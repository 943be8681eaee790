"""What a backend says about what actually ran: the typed answer of `Backend.describe()`.

Everything the harness reads or a report shows by name is a typed field: mechanism, dtype, device,
threads, weight bytes, and the typed parts `kv_cache` (KVCacheInfo: the cache's kind, nominal bits per
element and what it held after the last generation), `attention` (AttentionInfo: the kernel a case asked
for and what the profiler saw run), `attention_shape` (AttentionShape: the model's layers, heads, KV heads,
head dim and sliding window, read from its config.json when the case ran) and
`peak_memory_bandwidth_source` (where the peak behind MBU comes from). `details` holds anything else a
backend wants on record, free-form: shown as is, never read by bench (tests/test_description_contract.py
fails if a module of bench reads a key of it). Records written before these fields had them in
`details`; bench/records/upgrade.py moves them into the fields when such a run is loaded.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class KVCacheInfo(BaseModel):
    """The KV cache a backend decoded with, as it reports it (bench/measure/kvcache.py turns it into metrics)."""
    model_config = ConfigDict(extra="forbid")

    kind: str = Field(description="which cache: the backend's option (dynamic, off, quanto-int4, ...) or its own name")
    element_bits: int | float | None = Field(
        None, description="nominal bits per cached key/value element, scales left out (32: float32, 16: llama.cpp's "
        "f16); None: nothing cached")
    bytes: int | None = Field(None, description="bytes the cache held after the last generation, every tensor counted")
    tokens: int | None = Field(None, description="tokens each sequence's cache covered then")
    sequences: int | None = Field(None, description="sequences it held then (the batch)")
    measured_as: str | None = Field(None, description="how `bytes` was counted, where the backend says")
    residual_length: int | None = Field(None, description="a quantized cache's newest tokens kept in full precision")
    state_element_types: list[str] | None = Field(None, description="element types of the state (OpenVINO)")


class AttentionInfo(BaseModel):
    """The attention kernel a case asked for and what a short torch profile saw run (backends/hf/attention.py)."""
    model_config = ConfigDict(extra="forbid")

    requested: str = Field(description="the kernel asked for (the `attention` option)")
    kernel_ops: dict[str, int] = Field(default_factory=dict, description="attention operators profiled: calls")
    expected_op: str | None = Field(None, description="the operator name pattern that proves the kernel ran")
    verified: bool = Field(description="the asked kernel's operator ran and no other fused attention kernel did")
    verdict: str = Field(description="why verified or not, in words")


# config.json names of the same quantities across architectures (GPT-2 has its own)
_LAYERS, _HEADS, _HIDDEN = ("num_hidden_layers", "n_layer"), ("num_attention_heads", "n_head"), \
    ("hidden_size", "n_embd")


class AttentionShape(BaseModel):
    """A decoder's attention layout, read from its config.json when the case ran, so a report never re-reads it."""
    model_config = ConfigDict(extra="forbid")

    layers: int
    attention_heads: int
    kv_heads: int = Field(description="key/value heads: num_key_value_heads, else one per attention head")
    head_dim: int = Field(description="head_dim, else hidden_size / attention heads")
    sliding_window: int | None = Field(None, description="tokens a layer attends to, as config.json says; None: "
                                                         "full attention")

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> AttentionShape | None:
        """The shape of a config.json's decoder (its `text_config` where it has one); None if it lacks a count."""
        config = config.get("text_config") or config
        layers, heads = (next((config[k] for k in keys if config.get(k)), None) for keys in (_LAYERS, _HEADS))
        hidden = next((config[k] for k in _HIDDEN if config.get(k)), None)
        head_dim = config.get("head_dim") or (hidden // heads if hidden and heads else None)
        if not (layers and heads and head_dim):
            return None
        return cls(layers=layers, attention_heads=heads, kv_heads=config.get("num_key_value_heads") or heads,
                   head_dim=head_dim, sliding_window=config.get("sliding_window") or None)


class BackendDescription(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mechanism: str = Field(description="how the model ran: runtime, attention path, decode loop")
    dtype: str = Field(description="weight/activation type as loaded, e.g. float32, int8 weights")
    device: str = Field(description="where it ran: cpu, cuda, cuda:0, cpu + gpu offload...")
    threads: int | None = Field(None, description="intra-op threads the runtime actually uses")
    model_size_bytes: int | None = Field(None, description="bytes of weights as stored (quantized data + scales)")
    n_parameters: int | None = Field(None, description="number of weights the model stands for")
    quantization: str | None = Field(None, description="quantization method, or None for none")
    versions: dict[str, str] = Field(default_factory=dict, description="library versions that ran it")
    kv_cache: KVCacheInfo | None = Field(None, description="the KV cache it decoded with, where the backend reports it")
    attention: AttentionInfo | None = Field(None, description="the attention kernel asked for and the one verified")
    attention_shape: AttentionShape | None = Field(
        None, description="the model's attention layout from its config.json (the harness fills it: "
        "bench/measure/kvcache.py); None where the config is missing or names no layout")
    peak_memory_bandwidth_source: str | None = Field(
        None, description="where the peak memory bandwidth behind MBU comes from (the runner fills it)")
    details: dict[str, Any] = Field(default_factory=dict, description="anything else the backend wants on record, "
                                                                      "free-form: shown as is, never read by bench")
    conversion_seconds: float | None = Field(
        None, description="wall time of the conversion that made the files it ran (export, GGUF conversion), "
        "measured when they were built, even if this case found them cached; None: no conversion")
    conversion_peak_rss_bytes: int | None = Field(None, description="peak RSS of that conversion's process")
