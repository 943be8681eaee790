"""A realistic size (bench/models/realistic.py) at a reduced shape, and what a conversion cost reaching a record.

CI never builds the 494 M-parameter model nor runs suites/realistic.yaml: the full shape is checked on the
meta device (no weights), the builder at a reduced shape with the same vocabulary and tokenizer.
"""
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import ROOT, load_records, run_bench, write_suite

QWEN2_5_0_5B_PARAMETERS = 494_032_768  # Qwen/Qwen2.5-0.5B's parameter count (tied embeddings counted once)
REDUCED = {"hidden_size": 64, "intermediate_size": 128, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2}


def test_the_default_recipe_is_qwen2_5_0_5b_shape_without_allocating_it():
    torch = pytest.importorskip("torch")
    from transformers import Qwen2ForCausalLM

    from bench.models.realistic import Recipe

    with torch.device("meta"):
        model = Qwen2ForCausalLM(Recipe().config(eos_token_id=151643))
    assert sum(p.numel() for p in model.parameters()) == QWEN2_5_0_5B_PARAMETERS
    config = model.config
    assert (config.vocab_size, config.hidden_size, config.num_hidden_layers, config.intermediate_size) == \
        (151936, 896, 24, 4864)
    assert (config.num_attention_heads, config.num_key_value_heads, config.tie_word_embeddings) == (14, 2, True)


@pytest.fixture(scope="module")
def reduced():
    """The builder at a reduced shape (same 151936-token vocabulary and Qwen2 tokenizer), built into the cache."""
    pytest.importorskip("torch")
    from backends.base import MissingDependency
    from bench.models import realistic

    recipe = realistic.Recipe(**REDUCED)
    try:
        return realistic.build(recipe=recipe), recipe
    except MissingDependency as exc:  # llama-cpp-python (its sdist carries the tokenizer) not installed here
        pytest.skip(str(exc))


def _expected_parameters(r) -> int:
    head = r.hidden_size // r.num_heads
    attention = r.hidden_size * (r.num_heads * head) * 2 + 2 * (r.hidden_size + 1) * r.num_kv_heads * head \
        + r.num_heads * head
    layer = attention + 3 * r.hidden_size * r.intermediate_size + 2 * r.hidden_size
    return r.vocab_size * r.hidden_size + r.num_layers * layer + r.hidden_size


@pytest.mark.slow
def test_the_reduced_builder_makes_a_qwen2_with_qwen2s_tokenizer_and_records_how(reduced):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, recipe = reduced
    info = json.loads((path / "bench_model.json").read_text())
    assert info["n_parameters"] == _expected_parameters(recipe)
    assert info["tied_embeddings"] is True and info["weight_bytes"] == 2 * info["n_parameters"]  # bfloat16
    assert "random" in info["weights"] and info["build_seconds"] > 0 and info["build_peak_rss_bytes"] > 0
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert tokenizer("Hello world")["input_ids"] == [9707, 1879]  # Qwen2's ids, as the real checkpoint's
    assert tokenizer.eos_token == "<|endoftext|>"
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.model_type == "qwen2" and model.dtype == torch.bfloat16
    weights = dict(model.named_parameters())
    q = weights["model.layers.0.self_attn.q_proj.weight"].float()
    assert abs(q.std().item() - recipe.initializer_range) < 0.002  # transformers' init: normal(0, 0.02)
    assert torch.all(weights["model.layers.0.self_attn.q_proj.bias"] == 0)
    assert torch.all(weights["model.norm.weight"] == 1)
    with torch.no_grad():
        logits = model(torch.tensor([[9707, 1879]])).logits
    assert logits.shape == (1, 2, 151936) and torch.isfinite(logits).all()


@pytest.mark.slow
def test_the_same_recipe_builds_the_same_weights(reduced):
    from bench.models import realistic

    path, recipe = reduced
    before = hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()
    again = realistic.build(force=True, recipe=recipe, log=lambda line: None)
    assert hashlib.sha256((again / "model.safetensors").read_bytes()).hexdigest() == before


def test_a_child_conversions_peak_rss_is_its_own_not_its_parents(tmp_path):
    """run_python reads the child's VmHWM, which starts at exec: a large parent does not leak into it."""
    from backends.cached_build import run_python

    script = tmp_path / "child.py"
    script.write_text("import sys\nb = bytearray(200 * 2**20)\nb[::4096] = b'y' * len(b[::4096])\n"
                      "print('done', sys.argv[1:])\nsys.exit(3)\n")
    parent = bytearray(600 * 2**20)  # this process holds 600 MiB, touched
    parent[::4096] = b"x" * len(parent[::4096])
    child = run_python([str(script), "a", "b"])
    assert child.returncode == 3 and "done ['a', 'b']" in child.output and child.seconds > 0
    assert child.peak_rss_bytes is not None
    assert 200 * 2**20 < child.peak_rss_bytes < 400 * 2**20
    module = run_python(["-m", "json.tool", "--help"])  # -m MODULE ARGS
    assert module.returncode == 0 and "usage" in module.output and module.peak_rss_bytes < 200 * 2**20
    del parent


@pytest.mark.slow
def test_conversion_time_and_peak_rss_reach_the_record_and_the_report(tiny_llama, tmp_path):
    pytest.importorskip("onnxruntime_genai", reason="needs onnxruntime-genai: pip install 'bench[onnx]'")
    model = tmp_path / "model"  # a copy with one more file: a model never exported, so this run converts it
    shutil.copytree(tiny_llama, model)
    (model / "NOTE.txt").write_text(f"a copy of tiny-llama for {__name__} ({tmp_path.name})\n")
    suite = write_suite(tmp_path / "s.yaml", f"""
        name: conversion
        models: ["{model}"]
        backends:
          - {{backend: hf-eager, label: hf}}
          - {{backend: onnx-genai, label: onnx-int4, options: {{precision: int4}}}}
          - {{backend: llama-cpp, label: gguf-q8_0, options: {{quant: q8_0}}}}
        workloads: [{{batch_size: 1, prompt_tokens: 16, new_tokens: 4}}]
        tasks: [latency]
        repetitions: {{warmup: 0, min: 2, max: 2, processes: 1}}
        peak_memory_bandwidth_gbs: measured
        """)
    run_bench("run", str(suite), "--run-id", "c", cwd=tmp_path)
    records = {r.variant: r for r in load_records(tmp_path / "results" / "c")}
    onnx, hf = records["onnx-int4"], records["hf"]
    assert onnx.ok and hf.ok and records["gguf-q8_0"].status in ("ok", "skipped")
    manifest = json.loads((Path(onnx.backend.details["export_dir"]) / "export.json").read_text())
    assert onnx.value("conversion_s") == manifest["conversion"]["seconds"] > 0
    # the builder's own process: more than its interpreter and torch (> 100 MiB), far less than 24 GiB
    assert onnx.value("conversion_peak_rss_bytes") == manifest["conversion"]["peak_rss_bytes"]
    assert 100 * 2**20 < onnx.value("conversion_peak_rss_bytes") < 8 * 2**30
    assert "conversion_s" not in hf.metrics  # nothing converted: no number, not a zero
    gguf = records["gguf-q8_0"]
    if gguf.ok:  # llama-cpp-python installed: the f32 conversion plus the quantization, from conversion.json
        info = json.loads((Path(gguf.backend.details["gguf_file"]).parent / "conversion.json").read_text())
        assert gguf.value("conversion_s") == pytest.approx(info["seconds"] + info["input_conversion"]["seconds"])
        steps = [info["peak_rss_bytes"], info["input_conversion"]["peak_rss_bytes"]]
        assert gguf.metrics.get("conversion_peak_rss_bytes") == (None if None in steps else max(steps))
    for record in (onnx, hf):  # MBU against the copy bandwidth each case measured
        assert record.backend.peak_memory_bandwidth_source.startswith("measured: best of 5")
        assert record.value("mbu") == pytest.approx(
            record.value("achieved_bandwidth_gbs") / record.value("peak_memory_bandwidth_gbs"))
    report = (tmp_path / "reports" / "c" / "report.md").read_text()
    what_ran = report.split("## What ran")[1].split("##")[0]
    assert "conversion s" in what_ran and "conversion peak RSS MiB" in what_ran


def test_the_realistic_suite_is_valid_and_never_runs_in_ci():
    proc = run_bench("validate", str(ROOT / "suites" / "realistic.yaml"), cwd=ROOT)
    assert "6 cases" in proc.stdout and "qwen2.5-0.5b-shape" in proc.stdout
    workflows = "".join(p.read_text() for p in (ROOT / ".github" / "workflows").glob("*.yml"))
    assert "realistic" not in workflows and "qwen2.5-0.5b-shape" not in workflows
