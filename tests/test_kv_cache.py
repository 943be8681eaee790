"""KV cache options on the real tiny-llama: no cache, quantized caches (transformers, llama.cpp), and their bytes.

Known answers: decoding without a cache gives exactly the cached decode's tokens and logits; a float32
cache holds 2 (K, V) x 2 layers x 2 KV heads x 64 dims x 4 bytes = 2048 bytes per token, what the
config formula computes (bench/measure/kvcache.py); a quantized cache holds less than that and more
than its nominal bits (scales, residual), and moves the logits a little (KL > 0), int2 more than int4.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench.core.description import AttentionShape, BackendDescription, KVCacheInfo
from bench.measure import kvcache
from bench.measure.evaltext import eval_text
from bench.measure.perplexity import perplexity
from bench.measure.quality import Comparison
from tests.conftest import load_hf

pytestmark = pytest.mark.slow

EVAL_TOKENS, WINDOW, STRIDE = 512, 128, 64
FP32_BYTES_PER_TOKEN = 2 * 2 * 2 * 64 * 4


@pytest.fixture(scope="module")
def reference(tiny_llama):
    backend = load_hf(tiny_llama)
    ids = backend.tokenize(eval_text("stdlib-heldout"))[:EVAL_TOKENS]
    windows: list = []
    perplexity(backend.token_logits, ids, WINDOW, STRIDE, on_window=lambda lp, t: windows.append(lp))
    tokens = backend.generate([ids[:96], ids[200:296]], 12, lambda: None)
    return backend, ids, windows, tokens


def _kld(backend, ids, ref_windows) -> float:
    comparison, pending = Comparison(), iter(ref_windows)
    perplexity(backend.token_logits, ids, WINDOW, STRIDE, on_window=lambda lp, t: comparison.add(next(pending), lp, t))
    return comparison.result().kld_mean


def test_the_config_formula_gives_2048_bytes_per_token_for_tiny_llama(tiny_llama):
    shape = kvcache.attention_shape(tiny_llama)
    assert shape == AttentionShape(layers=2, attention_heads=4, kv_heads=2, head_dim=64)
    assert shape == AttentionShape.from_config(json.loads((Path(tiny_llama) / "config.json").read_text()))
    assert kvcache.computed_bytes_per_token(shape, 32) == FP32_BYTES_PER_TOKEN
    assert kvcache.computed_bytes_per_token(shape, 4) == FP32_BYTES_PER_TOKEN / 8


def test_the_shape_is_read_from_each_architectures_own_config_names():
    """GPT-2 names its counts n_layer / n_head / n_embd; a text_config holds a multimodal model's decoder; a
    config without the counts has no shape (and no computed bytes), rather than failing the case."""
    gpt2 = {"n_layer": 2, "n_head": 4, "n_embd": 64, "n_positions": 1024}
    assert AttentionShape.from_config(gpt2) == AttentionShape(layers=2, attention_heads=4, kv_heads=4, head_dim=16)
    nested = {"text_config": {"num_hidden_layers": 3, "num_attention_heads": 8, "num_key_value_heads": 2,
                              "hidden_size": 512, "sliding_window": 32}}
    assert AttentionShape.from_config(nested) == AttentionShape(layers=3, attention_heads=8, kv_heads=2, head_dim=64,
                                                                sliding_window=32)
    assert AttentionShape.from_config({"vocab_size": 10}) is None
    description = BackendDescription(mechanism="m", dtype="float32", device="cpu",
                                     kv_cache=KVCacheInfo(kind="dynamic", element_bits=32, bytes=4096, tokens=2))
    assert kvcache.metrics("/nonexistent", description) == {"kv_cache_measured_bytes_per_token": 2048}
    assert description.attention_shape is None


def test_a_float32_cache_measures_exactly_what_the_config_computes(tiny_llama, reference):
    backend = reference[0]
    description = backend.describe()
    metrics = kvcache.metrics(tiny_llama, description)
    kv = description.kv_cache
    assert kv is not None and (kv.kind, kv.element_bits) == ("dynamic", 32)
    assert kv.tokens == 96 + 12 - 1 and kv.sequences == 2  # the last token is never fed back
    assert metrics == {"kv_cache_bytes_per_token": FP32_BYTES_PER_TOKEN,
                       "kv_cache_measured_bytes_per_token": FP32_BYTES_PER_TOKEN}
    assert description.attention_shape == kvcache.attention_shape(tiny_llama)  # recorded with the number
    assert not {"kv_cache", "attention"} & set(description.details)  # typed fields, not free-form details


def test_decoding_without_a_cache_gives_the_same_tokens_and_logits(tiny_llama, reference):
    _, ids, ref_windows, tokens = reference
    backend = load_hf(tiny_llama, kv_cache="off")
    steps: list = []
    assert backend.generate([ids[:96], ids[200:296]], 12, lambda: steps.append(1)) == tokens and len(steps) == 12
    assert _kld(backend, ids, ref_windows) == 0
    description = backend.describe()
    assert description.kv_cache == KVCacheInfo(kind="off", element_bits=None)
    assert "use_cache=False" in description.details["decode_loop"]
    assert kvcache.metrics(tiny_llama, description) == {}  # nothing cached, nothing to compute


@pytest.fixture(scope="module")
def quantized_kld():
    return {}


@pytest.mark.parametrize("kind, bits", [("quanto-int4", 4), ("quanto-int2", 2), ("fp8", 8)])
def test_a_quantized_cache_holds_less_and_moves_the_logits_a_little(tiny_llama, reference, quantized_kld, kind, bits):
    _, ids, ref_windows, _ = reference
    backend = load_hf(tiny_llama, kv_cache=kind, kv_residual_length=32)
    out = backend.generate([ids[:96]], 40, lambda: None)
    assert len(out[0]) == 40
    description = backend.describe()
    metrics = kvcache.metrics(tiny_llama, description)
    assert description.kv_cache is not None and description.kv_cache.residual_length == (0 if kind == "fp8" else 32)
    assert metrics["kv_cache_bytes_per_token"] == FP32_BYTES_PER_TOKEN * bits / 32
    # more than the nominal bits (per-group scales, the full-precision residual), less than float32
    assert metrics["kv_cache_bytes_per_token"] < metrics["kv_cache_measured_bytes_per_token"] < FP32_BYTES_PER_TOKEN
    kld = _kld(backend, ids, ref_windows)
    assert 0 < kld < 0.5
    quantized_kld[kind] = kld


def test_two_bits_cost_more_quality_than_four(quantized_kld):
    if not {"quanto-int4", "quanto-int2"} <= set(quantized_kld):
        pytest.skip("needs both quanto runs above")
    assert quantized_kld["quanto-int2"] > quantized_kld["quanto-int4"] > 0


def test_llama_cpp_quantized_kv_types_shrink_the_cache_and_cost_quality(tiny_llama, reference):
    pytest.importorskip("llama_cpp")
    from backends.gguf.llama_cpp import LlamaCpp

    _, ids, _, _ = reference
    measured, logits = {}, {}
    for kv in ("f16", "q8_0", "q4_0"):
        backend = LlamaCpp(LlamaCpp.Options(quant="f32", type_k=kv, type_v=kv))
        backend.load(tiny_llama)
        backend.generate([ids[:96]], 12, lambda: None)
        description = backend.describe()
        measured[kv] = kvcache.metrics(tiny_llama, description)
        logits[kv] = backend.token_logits(ids[:WINDOW])
        backend.close()
    # per token: 2 x 2 layers x 2 heads x 64 dims at 16, 8.5 and 4.5 bits (q8_0/q4_0 blocks of 32 carry an f16
    # scale), plus a few bytes of llama.cpp cell metadata per token in its serialized state
    for kv, bits in (("f16", 16), ("q8_0", 8.5), ("q4_0", 4.5)):
        computed = measured[kv]["kv_cache_bytes_per_token"]
        assert computed == 512 * bits / 8
        assert computed < measured[kv]["kv_cache_measured_bytes_per_token"] < computed + 64
    drift = {kv: float(np.abs(logits[kv] - logits["f16"]).max()) for kv in ("q8_0", "q4_0")}
    assert 0 < drift["q8_0"] < drift["q4_0"]


def test_kv_metrics_need_what_the_backend_reported():
    description = BackendDescription(mechanism="m", dtype="float32", device="cpu")
    assert kvcache.metrics("/nonexistent", description) == {}
