"""GGUF conversion and the llama-cpp backend, checked against the real HF model and real llama.cpp.

Known answers: the GGUF file read back with gguf.GGUFReader (architecture, tokenizer, tensor shapes,
types, the Q/K permutation); f32/f16 perplexity and greedy tokens equal hf-eager's on the same ids;
llama.cpp's own tokenizer on the written vocab reproduces the HF tokenizer's ids; quantized files
shrink and drift (KL divergence vs the HF fp32 distributions) in the expected order.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from scipy.special import log_softmax

from tests.conftest import load_records, run_bench, write_suite

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: pip install 'bench[gguf]'")
gguf = pytest.importorskip("gguf", reason="gguf is not installed: pip install 'bench[gguf]'")

from backends.gguf.convert import (
    BENCH_WRITER,
    LLAMACPP_CONVERTER,
    QUANTIZER,
    ConversionError,
    conversion_info,
    gguf_file,
    permute,
)
from backends.gguf.llama_cpp import LlamaCpp
from bench.core.timing import Clock
from bench.measure.latency import derive, one_generation
from bench.measure.perplexity import perplexity
from bench.models.corpus import heldout_text

N_TOKENS, WINDOW, STRIDE = 1024, 256, 128


@pytest.fixture(scope="module")
def hf(tiny_llama):
    from backends.hf.eager import HFEager

    backend = HFEager(HFEager.Options(), threads=1)
    backend.load(tiny_llama)
    backend.ids = backend.tokenize(heldout_text())[:N_TOKENS]
    return backend


@pytest.fixture(scope="module")
def hf_perplexity(hf):
    return perplexity(hf.token_logits, hf.ids, WINDOW, STRIDE).perplexity


def load(model: str, **options) -> LlamaCpp:
    backend = LlamaCpp(LlamaCpp.Options(**options), threads=1)
    backend.load(model)
    return backend


def test_permute_moves_rotate_half_pairs_next_to_each_other():
    # one head of dim 4: HF pairs rows (0, 2) and (1, 3) for RoPE, llama.cpp pairs adjacent rows
    rows = np.arange(4.0).reshape(4, 1)
    assert permute(rows, 1, 1).ravel().tolist() == [0.0, 2.0, 1.0, 3.0]
    # with grouped KV heads, K is permuted per KV head
    assert permute(np.arange(8.0), 4, 2).tolist() == [0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]


@pytest.mark.parametrize("quant", ["f32", "f16"])
def test_converted_file_reads_back_with_llama_metadata_vocab_and_weights(tiny_llama, quant):
    from safetensors.numpy import load_file
    from transformers import AutoTokenizer

    reader = gguf.GGUFReader(gguf_file(tiny_llama, quant))
    field = lambda key: reader.fields[key].contents()
    assert field("general.architecture") == "llama"
    sizes = (field("llama.block_count"), field("llama.embedding_length"), field("llama.feed_forward_length"))
    assert sizes == (2, 256, 512)
    assert (field("llama.attention.head_count"), field("llama.attention.head_count_kv")) == (4, 2)
    assert (field("tokenizer.ggml.model"), field("tokenizer.ggml.pre")) == ("gpt2", "gpt-2")
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    tokens = field("tokenizer.ggml.tokens")
    assert len(tokens) == 2048 and tokens[5] == tokenizer.convert_ids_to_tokens(5)
    assert len(field("tokenizer.ggml.merges")) == 1791
    assert field("tokenizer.ggml.token_type")[0] == gguf.TokenType.CONTROL  # <|endoftext|>
    assert field("tokenizer.ggml.eos_token_id") == tokenizer.eos_token_id == 0

    tensors = {t.name: t for t in reader.tensors}
    assert len(tensors) == 3 + 2 * 9
    wide = gguf.GGMLQuantizationType.F32 if quant == "f32" else gguf.GGMLQuantizationType.F16
    assert tensors["token_embd.weight"].tensor_type == tensors["blk.1.ffn_down.weight"].tensor_type == wide
    assert tensors["output_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    assert list(tensors["blk.0.attn_k.weight"].shape) == [256, 128]  # GGUF lists ne0 (columns) first
    assert list(tensors["output.weight"].shape) == [256, 2048]
    hf_weights = load_file(os.path.join(tiny_llama, "model.safetensors"))
    q = np.asarray(tensors["blk.0.attn_q.weight"].data, dtype=np.float32)
    k = np.asarray(tensors["blk.0.attn_k.weight"].data, dtype=np.float32)
    tol = 0 if quant == "f32" else 1e-3
    np.testing.assert_allclose(q, permute(hf_weights["model.layers.0.self_attn.q_proj.weight"], 4, 4), atol=tol)
    np.testing.assert_allclose(k, permute(hf_weights["model.layers.0.self_attn.k_proj.weight"], 4, 2), atol=tol)


@pytest.mark.parametrize("quant, rel", [("f32", 1e-4), ("f16", 1e-3)])
def test_full_precision_gguf_perplexity_equals_hf(tiny_llama, hf, hf_perplexity, quant, rel):
    backend = load(tiny_llama, quant=quant)
    result = perplexity(backend.token_logits, hf.ids, WINDOW, STRIDE)
    assert result.scored_tokens == N_TOKENS - 1
    assert result.perplexity == pytest.approx(hf_perplexity, rel=rel)


def test_f32_greedy_tokens_equal_hf_and_a_batch_decodes_like_its_sequences(tiny_llama, hf):
    backend = load(tiny_llama, quant="f32")
    prompts = [hf.ids[:48], hf.ids[300:348], hf.ids[600:664]]  # different lengths in one batch
    together = backend.generate(prompts, 20, lambda: None)
    assert together == [hf.generate([p], 20, lambda: None)[0] for p in prompts]
    assert together == [backend.generate([p], 20, lambda: None)[0] for p in prompts]


def _mean_kl(reference: list[np.ndarray], logits: list[np.ndarray]) -> float:
    """Mean over positions of KL(P_reference || P_logits), in nats."""
    total, count = 0.0, 0
    for ref, other in zip(reference, logits):
        log_p, log_q = log_softmax(ref.astype(np.float64), -1), log_softmax(other.astype(np.float64), -1)
        total += float((np.exp(log_p) * (log_p - log_q)).sum())
        count += len(ref)
    return total / count


def test_quantized_files_are_smaller_and_drift_more_as_bits_drop(tiny_llama, hf):
    windows = [hf.ids[i: i + WINDOW] for i in range(0, N_TOKENS, WINDOW)]
    reference = [hf.token_logits(w) for w in windows]
    sizes, kl = {}, {}
    for quant in ["f32", "f16", "q8_0", "q4_0", "q4_k_m"]:
        backend = load(tiny_llama, quant=quant)
        description = backend.describe()
        sizes[quant] = description.model_size_bytes
        assert sizes[quant] == os.path.getsize(description.details["gguf_file"])
        kl[quant] = _mean_kl(reference, [backend.token_logits(w) for w in windows])
        backend.close()
    assert max(sizes["q4_0"], sizes["q4_k_m"]) < sizes["q8_0"] < sizes["f16"] < sizes["f32"]
    assert kl["f32"] < 1e-6
    assert 0 < kl["q8_0"] < min(kl["q4_0"], kl["q4_k_m"])


def test_generate_marks_every_step_and_runs_under_the_latency_measurement(tiny_llama, hf):
    backend = load(tiny_llama, quant="q8_0")
    for batch_size in (1, 3):
        calls: list[int] = []
        out = backend.generate([hf.ids[:32]] * batch_size, 9, lambda calls=calls: calls.append(1))
        assert len(calls) == 9 and [len(seq) for seq in out] == [9] * batch_size
    stamps = [one_generation(backend, [hf.ids[:32], hf.ids[100:132]], 8, Clock()) for _ in range(3)]
    samples, _ = derive(stamps, 2, 32)
    assert all(len(s) == 8 for s in samples.stamps_ns)
    assert all(np.all(np.diff(s) > 0) for s in samples.stamps_ns)
    description = backend.describe()
    assert (description.threads, description.details["n_gpu_layers"], description.dtype) == (1, 0, "Q8_0")


def test_sequences_longer_than_the_context_are_refused(tiny_llama, hf):
    backend = load(tiny_llama, n_ctx=64)
    with pytest.raises(ValueError, match="n_ctx=64"):
        backend.generate([hf.ids[:60]], 8, lambda: None)


def test_a_gguf_file_runs_as_is_with_llama_cpp_tokenizer(tiny_llama, hf, hf_perplexity):
    path = str(gguf_file(tiny_llama, "f32"))
    backend = load(path)
    description = backend.describe()
    assert description.details["gguf_file"] == path and description.details["gguf_source"] == "given as model"
    text = heldout_text()[:4000]
    assert backend.tokenize(text) == hf.tokenize(text)  # written vocab + merges + gpt-2 pre-tokenizer
    assert perplexity(backend.token_logits, hf.ids, WINDOW, STRIDE).perplexity == pytest.approx(hf_perplexity, rel=1e-4)
    with pytest.raises(ValueError, match="already a GGUF file"):
        load(path, quant="q8_0")


def test_conversion_is_cached_by_content_and_not_rebuilt(tiny_llama, tmp_path, monkeypatch):
    from bench.core.cache import cache_dir

    source = cache_dir() / "llama-cpp-source"  # llama.cpp's converter, unpacked once: not what this test checks
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path))
    if source.is_dir():
        (tmp_path / "llama-cpp-source").symlink_to(source)
    log: list[str] = []

    def built() -> list[str]:
        return [line for line in log if line.startswith("converting ")]

    first = gguf_file(tiny_llama, "q4_0", log.append)
    assert len(built()) == 2  # q4_0, made from the f32 file built first
    mtime = first.stat().st_mtime_ns
    assert gguf_file(tiny_llama, "q4_0", log.append) == first and len(built()) == 2
    assert first.stat().st_mtime_ns == mtime
    assert first.is_relative_to(tmp_path / "gguf")
    assert gguf_file(tiny_llama, "f32", log.append).parent != first.parent and len(built()) == 2


def test_directories_llama_cpp_cannot_convert_are_refused_with_a_reason(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ConversionError, match="convert_hf_to_gguf.py failed"):
        gguf_file(tmp_path, "f16", log=lambda _: None)
    with pytest.raises(ConversionError, match="not a Hugging Face model directory"):
        gguf_file(tmp_path / "missing", "f16")
    with pytest.raises(ConversionError, match="valid values: f32, f16"):
        gguf_file(tmp_path, "q3")


def test_tiny_llamas_home_trained_tokenizer_falls_back_to_benchs_writer_with_the_reason(tiny_llama):
    info = conversion_info(gguf_file(tiny_llama, "f32"))
    assert info["converter"] == BENCH_WRITER and "pre-tokenizer was not recognized" in info["why_not_llama_cpp"]
    quantized = conversion_info(gguf_file(tiny_llama, "q8_0"))
    assert quantized["converter"] == QUANTIZER and quantized["input_conversion"]["converter"] == BENCH_WRITER
    assert quantized["seconds"] > 0 and quantized["peak_rss_bytes"] > 1 << 20


@pytest.mark.slow
def test_llama_cpps_own_converter_makes_a_qwen3_that_matches_hf(tmp_path):
    """Qwen3 (QK-norm, no biases, a real 152k vocabulary): llama.cpp's converter, then llama.cpp's logits vs HF's.

    The weights are drawn with a large initializer range (0.3, trained 2 steps) so attention is sharp and a
    mislaid RoPE layout, norm or head split would move the logits far beyond the tolerance."""
    import dataclasses

    from backends.hf.eager import HFEager
    from bench.models.zoo import ZOO

    base = ZOO["zoo-qwen3"]
    recipe = dataclasses.replace(base, architecture=(*base.architecture, ("initializer_range", 0.3)), steps=2,
                                 warmup_steps=1, heldout_tokens=256)
    model = str(recipe.build(log=lambda _: None))
    path = gguf_file(model, "f32", log=lambda _: None)
    info = conversion_info(path)
    assert info["converter"].startswith(LLAMACPP_CONVERTER) and info["seconds"] > 0
    assert info["peak_rss_bytes"] > 10 << 20  # a Python process that imported torch
    reader = gguf.GGUFReader(path)
    assert reader.fields["general.architecture"].contents() == "qwen3"
    assert reader.fields["tokenizer.ggml.pre"].contents() == "qwen2"  # recognised as Qwen's own tokenizer

    hf = HFEager(HFEager.Options(), threads=1)
    hf.load(model)
    ids = hf.tokenize(heldout_text())[:WINDOW]
    expected = log_softmax(hf.token_logits(ids).astype(np.float64), axis=-1)
    hf.close()
    cpp = load(model, quant="f32")
    assert cpp.tokenize(heldout_text())[:WINDOW] == ids
    got = log_softmax(cpp.token_logits(ids).astype(np.float64), axis=-1)
    cpp.close()
    assert np.abs(expected).max() > 10.0  # far from uniform
    # measured here: largest |log p| difference 1.2e-2 at log-probabilities down to -28 (the same with an f32 KV
    # cache), largest probability difference 1.5e-4, largest KL 3e-6 nats, perplexity 4.3e-5 relative
    assert np.abs(np.exp(got) - np.exp(expected)).max() < 1e-3
    assert (np.exp(expected) * (expected - got)).sum(-1).max() < 1e-4
    nll_cpp = [-float(got[k][ids[k + 1]]) for k in range(len(ids) - 1)]
    nll = [-float(expected[k][ids[k + 1]]) for k in range(len(ids) - 1)]
    assert np.exp(np.mean(nll_cpp)) == pytest.approx(np.exp(np.mean(nll)), rel=1e-4)
    assert (got.argmax(-1) == expected.argmax(-1)).mean() > 0.99

    q8 = conversion_info(gguf_file(model, "q8_0", log=lambda _: None))
    assert q8["converter"] == QUANTIZER and q8["input_conversion"]["converter"].startswith(LLAMACPP_CONVERTER)


@pytest.mark.slow
def test_a_suite_with_llama_cpp_cases_runs_end_to_end(tiny_llama, tmp_path):
    write_suite(tmp_path / "gguf.yaml", """
        name: gguf-test
        models: [tiny-llama]
        backends:
          - backend: hf-eager
          - backend: llama-cpp
            label: gguf-f32
            options: {quant: f32}
        reference: hf-eager
        workloads:
          - {batch_size: 2, prompt_tokens: 32, new_tokens: 8}  # two sequences in one llama_batch
        tasks: [latency, perplexity]
        repetitions: {warmup: 1, min: 3, max: 5, max_time_s: 2, ci_target: 0.5}
        perplexity: {text: stdlib-heldout, window: 256, stride: 128, max_tokens: 1024}
        threads: 1
        timeout_s: 300
    """)
    run_bench("run", "gguf.yaml", "--run-id", "gguf", cwd=tmp_path)
    records = {(r.variant, r.task, r.workload and r.workload.batch_size): r
               for r in load_records(tmp_path / "results" / "gguf")}
    assert len(records) == 4 and {r.status for r in records.values()} == {"ok"}
    r = records[("gguf-f32", "latency", 2)]
    assert r.latency.repetitions >= 3 and r.value("decode_tok_s") > 0
    assert r.backend.dtype == "all F32" and r.backend.threads == 1
    assert r.value("model_size_bytes") == os.path.getsize(r.backend.details["gguf_file"])
    ppl = {v: records[(v, "perplexity", None)] for v in ("hf-eager", "gguf-f32")}
    assert ppl["gguf-f32"].perplexity.scored_tokens == ppl["hf-eager"].perplexity.scored_tokens == 1023
    assert ppl["gguf-f32"].value("perplexity") == pytest.approx(ppl["hf-eager"].value("perplexity"), rel=1e-4)
    assert "gguf-f32" in (tmp_path / "reports" / "gguf" / "report.md").read_text()
