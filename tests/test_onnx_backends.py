"""The ONNX Runtime backends on the real built-in model: exact fp32 agreement with transformers,
honest quantized variants, a cached export, and a suite run through the CLI."""
import json
import math
import sys
from pathlib import Path

import pytest

from backends.base import MissingDependency
from backends.hf.eager import HFEager
from backends.onnx.export import export
from backends.onnx.genai import OnnxGenai
from backends.onnx.ort import OnnxOrt
from bench.core.timing import Clock
from bench.measure.latency import derive, one_generation
from bench.measure.perplexity import perplexity
from bench.models.corpus import heldout_text
from bench.records.schema import ProfileSettings
from tests.conftest import load_records, run_bench, write_suite

pytest.importorskip("onnxruntime_genai", reason="needs onnxruntime-genai: pip install 'bench[onnx]'")
pytest.importorskip("onnxruntime", reason="needs onnxruntime: pip install 'bench[onnx]'")

VARIANTS = {
    "genai-fp32": (OnnxGenai, {"precision": "fp32"}),
    "genai-int8": (OnnxGenai, {"precision": "int8"}),
    "genai-int4": (OnnxGenai, {"precision": "int4"}),
    "genai-int8-dynamic": (OnnxGenai, {"precision": "int8-dynamic"}),
    "ort-fp32": (OnnxOrt, {"quantization": "none"}),
    "ort-int8-dynamic": (OnnxOrt, {"quantization": "int8-dynamic"}),
}
FP32 = ("genai-fp32", "ort-fp32")
QUANTIZED = ("genai-int8", "genai-int4", "genai-int8-dynamic", "ort-int8-dynamic")


@pytest.fixture(scope="module")
def loaded(tiny_llama):
    backends = {}
    for label, (cls, options) in {"hf-eager": (HFEager, {}), **VARIANTS}.items():
        backend = cls(cls.Options(**options), threads=1)
        backend.load(tiny_llama)
        backends[label] = backend
    return backends


@pytest.fixture(scope="module")
def eval_ids(loaded):
    return loaded["hf-eager"].tokenize(heldout_text())[:1024]


@pytest.fixture(scope="module")
def perplexities(loaded, eval_ids):
    return {label: perplexity(b.token_logits, eval_ids, 256, 128).perplexity for label, b in loaded.items()}


@pytest.mark.slow
def test_tokenizer_json_gives_transformers_ids_without_torch(loaded, eval_ids):
    text = heldout_text()
    for label in FP32:
        assert loaded[label].tokenize(text)[:1024] == eval_ids


@pytest.mark.slow
def test_fp32_perplexity_equals_transformers_on_the_same_token_ids(perplexities):
    for label in FP32:
        assert perplexities[label] == pytest.approx(perplexities["hf-eager"], rel=1e-3)
    assert perplexities["genai-fp32"] == pytest.approx(perplexities["hf-eager"], rel=1e-5)  # in fact ~1e-8


@pytest.mark.slow
def test_quantized_perplexity_is_finite_different_and_not_absurd(perplexities):
    fp32 = perplexities["genai-fp32"]
    for label in QUANTIZED:
        assert math.isfinite(perplexities[label]) and perplexities[label] != fp32, label
        assert perplexities[label] < 2 * fp32, label
    # one artifact, two runtimes: genai and a plain session compute the same quantize_dynamic graph
    assert perplexities["ort-int8-dynamic"] == pytest.approx(perplexities["genai-int8-dynamic"], rel=1e-6)


@pytest.mark.slow
def test_fp32_greedy_tokens_equal_hf_eager_in_a_batch_of_two(loaded, eval_ids):
    prompts = [eval_ids[:48], eval_ids[300:348]]
    expected = loaded["hf-eager"].generate(prompts, 24, lambda: None)
    for label in FP32:
        steps = []
        assert loaded[label].generate(prompts, 24, lambda s=steps: s.append(1)) == expected, label
        assert len(steps) == 24  # on_token once per step
    genai = loaded["genai-fp32"]
    assert [genai.generate([p], 24, lambda: None)[0] for p in prompts] == expected


@pytest.mark.slow
@pytest.mark.parametrize("label", ["genai-int4", "ort-int8-dynamic"])
def test_generate_marks_every_token_through_the_latency_measurement(loaded, eval_ids, label):
    stamps = [one_generation(loaded[label], [eval_ids[:32], eval_ids[200:232]], 8, Clock()) for _ in range(3)]
    samples, metrics = derive(stamps, 2, 32)
    assert all(len(s) == 8 and s == sorted(s) for s in samples.stamps_ns)
    assert metrics["decode_tok_s"] > 0 and metrics["prefill_tok_s"] > 0


@pytest.mark.slow
def test_describe_reports_the_graph_that_ran_and_its_file_bytes(loaded):
    described = {label: loaded[label].describe() for label in VARIANTS}
    for label, d in described.items():
        files = [Path(d.details["export_dir"]) / name for name in ("model.onnx", "model.onnx.data")]
        assert d.model_size_bytes == sum(f.stat().st_size for f in files), label
        assert d.versions["onnxruntime"] and d.versions["onnxruntime_genai"] and d.device == "cpu"
    assert described["genai-fp32"].details["graph"]["ops"]["GroupQueryAttention"] == 2  # the KV-cache attention op
    assert described["genai-int4"].details["graph"]["matmulnbits"][0]["bits"] == 4
    assert described["genai-int8"].details["graph"]["matmulnbits"][0]["bits"] == 8
    assert "MatMulInteger" in described["ort-int8-dynamic"].details["graph"]["ops"]
    sizes = {label: d.model_size_bytes for label, d in described.items()}
    assert sizes["genai-int4"] < sizes["genai-int8"] < sizes["genai-fp32"] == sizes["ort-fp32"]
    assert sizes["genai-int8-dynamic"] == sizes["ort-int8-dynamic"] < sizes["genai-fp32"]
    assert "og.Generator" in described["genai-fp32"].mechanism
    assert "InferenceSession" in described["ort-fp32"].mechanism


@pytest.mark.slow
def test_export_is_built_once_then_read_from_the_cache(loaded, tiny_llama):
    first = export(tiny_llama, "int4")  # the fixture built it (or found it) already
    stamps = {p.name: p.stat().st_mtime_ns for p in first.path.iterdir()}
    again = export(tiny_llama, "int4")
    assert again.cached and again.path == first.path
    assert {p.name: p.stat().st_mtime_ns for p in again.path.iterdir()} == stamps  # nothing rewritten
    manifest = json.loads((again.path / "export.json").read_text())
    assert manifest["precision"] == "int4" and manifest["source"] == tiny_llama
    assert export(tiny_llama, "int8").path != first.path  # precision is part of the key


def test_missing_runtime_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime_genai", None)  # what `import` sees when it is not installed
    for cls in (OnnxGenai, OnnxOrt):
        with pytest.raises(MissingDependency, match=r"bench\[onnx\]"):
            cls(cls.Options(), threads=1).load(str(tmp_path))


def test_cuda_without_its_runtime_is_a_missing_dependency(tmp_path):
    import onnxruntime
    import onnxruntime_genai

    if onnxruntime_genai.is_cuda_available() or "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("a CUDA build of ONNX Runtime is installed")
    with pytest.raises(MissingDependency, match="onnxruntime-genai-cuda"):
        OnnxGenai(OnnxGenai.Options(execution_provider="cuda")).load(str(tmp_path))
    with pytest.raises(MissingDependency, match="onnxruntime-gpu"):
        OnnxOrt(OnnxOrt.Options(execution_provider="cuda")).load(str(tmp_path))


def test_bad_options_are_refused_at_validation():
    with pytest.raises(ValueError, match="fp16 needs execution_provider cuda"):
        OnnxGenai.Options(precision="fp16")
    assert OnnxGenai.Options(precision="fp16", execution_provider="cuda").precision == "fp16"
    with pytest.raises(ValueError, match="execution_provider: cuda, not device"):
        OnnxOrt.Options(device="cuda")
    with pytest.raises(ValueError):
        OnnxOrt.Options(quantization="int4")


@pytest.mark.slow
def test_a_suite_with_onnx_genai_runs_through_the_cli(tiny_llama, tmp_path, perplexities):
    suite = write_suite(tmp_path / "onnx.yaml", """
        name: onnx-cli
        models: [tiny-llama]
        backends:
          - {backend: onnx-genai, label: onnx-fp32}
        workloads: [{batch_size: 2, prompt_tokens: 16, new_tokens: 8}]
        tasks: [latency, perplexity]
        repetitions: {warmup: 1, min: 3, max: 5, max_time_s: 2, ci_target: 0.5}
        perplexity: {window: 256, stride: 128, max_tokens: 1024}
        timeout_s: 300
    """)
    run_bench("run", str(suite), "--run-id", "onnx", cwd=tmp_path)
    records = load_records(tmp_path / "results" / "onnx")
    assert [(r.task, r.status) for r in records] == [("latency", "ok"), ("perplexity", "ok")]
    latency, quality = records
    assert latency.backend.details["precision"] == "fp32" and latency.backend.details["export_cached"]
    assert 3 <= latency.latency.repetitions <= 5 and latency.value("decode_tok_s") > 0
    assert latency.value("model_size_bytes") == latency.backend.model_size_bytes > 0
    # the worker tokenizes the same held-out text: the same perplexity as in-process
    assert quality.value("perplexity") == pytest.approx(perplexities["genai-fp32"], rel=1e-6)
    assert quality.perplexity.scored_tokens == 1023


@pytest.mark.slow
@pytest.mark.parametrize("label", ["genai-fp32", "ort-fp32"])
def test_native_profile_counts_one_forward_per_new_token(loaded, eval_ids, label, tmp_path):
    from bench.measure.profiling import native_profile

    settings = {**ProfileSettings().model_dump(), "warmup": 1, "steps": 2, "top": 20}
    summary = native_profile(loaded[label], [eval_ids[:32]], 8, settings, tmp_path)
    calls = {op["name"]: op["calls"] for op in summary["top_ops"]}
    forwards = 8 * (settings["warmup"] + settings["steps"])  # the prompt's forward, then one per later token
    assert calls["GroupQueryAttention"] == 2 * forwards  # 2 layers
    assert calls["MatMul"] == 11 * forwards  # the graph's 11 MatMul nodes (describe()'s op count)
    assert summary["profiler"].startswith("onnxruntime") and list(tmp_path.glob("*.json.gz"))
    assert len(loaded[label].generate([eval_ids[:32]], 4, lambda: None)[0]) == 4  # the measured model is back
