"""Profiling: a profiled case leaves a TensorBoard-readable trace and a 'where the time goes' report
section, after (never during) its timed measurement; operator classification and ORT profiles."""
from __future__ import annotations

import gzip
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from backends.onnx.profile import ort_profile_ops
from bench.measure.profiling import category, compress_and_budget, summarize_ops
from tests.conftest import KNOWN_ANSWER, load_records, run_bench, write_suite


def test_operators_are_classified_by_name():
    assert category("aten::_scaled_dot_product_flash_attention_for_cpu") == "attention"
    assert category("aten::_softmax") == "attention"
    assert category("GroupQueryAttention") == "attention"
    for name in ["aten::mm", "aten::addmm", "aten::bmm", "aten::linear", "MatMulNBits", "Gemm", "aten::_int_mm"]:
        assert category(name) == "matmul", name
    for name in ["aten::add", "aten::copy_", "aten::mul", "aten::embedding", "SimplifiedLayerNormalization"]:
        assert category(name) == "other", name


def test_summary_ranks_by_self_time_and_shares_sum_to_one():
    ops = [{"name": "aten::mm", "calls": 4, "self_cpu_us": 600.0},
           {"name": "aten::_softmax", "calls": 2, "self_cpu_us": 100.0},
           {"name": "aten::add", "calls": 8, "self_cpu_us": 300.0},
           {"name": "ProfilerStep*", "calls": 2, "self_cpu_us": 5000.0},  # bench's own ranges are not operators
           {"name": "bench/decode", "calls": 2, "self_cpu_us": 5000.0}]
    s = summarize_ops(ops, top=2)
    assert s["ops_self_cpu_us"] == 1000.0 and s["ops_self_device_us"] is None
    assert s["shares"]["cpu"] == {"attention": 0.1, "matmul": 0.6, "other": 0.3}
    assert [op["name"] for op in s["top_ops"]] == ["aten::mm", "aten::add"]
    assert s["top_ops"][0]["self_cpu_share"] == 0.6


def test_ort_profile_is_parsed_into_operator_totals(tmp_path):
    if importlib.util.find_spec("onnxruntime") is None:
        pytest.skip("onnxruntime is not installed: pip install 'bench[onnx]'")
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 64])
    w = helper.make_tensor("w", TensorProto.FLOAT, [64, 64], np.ones((64, 64), np.float32).ravel().tolist())
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["h"]),
                               helper.make_node("Softmax", ["h"], ["y"], axis=-1)], "g", [x], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(tmp_path / "ort")
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    for _ in range(3):
        session.run(None, {"x": np.ones((8, 64), np.float32)})
    ops = {op["name"]: op for op in ort_profile_ops(session.end_profiling())}
    assert ops["MatMul"]["calls"] == 3 and ops["Softmax"]["calls"] == 3
    assert ops["MatMul"]["self_cpu_us"] > 0
    shares = summarize_ops(list(ops.values()), top=5)["shares"]["cpu"]
    assert shares["matmul"] > 0 and shares["attention"] > 0
    assert sum(shares.values()) == pytest.approx(1.0)


def test_profile_settings_apply_per_variant_and_only_to_latency_cases(tmp_path):
    from bench.suite import load_suite

    write_suite(tmp_path / "s.yaml", f"""
        name: ka
        models: [none]
        backends:
          - {{backend: "{KNOWN_ANSWER}", label: plain}}
          - {{backend: "{KNOWN_ANSWER}", label: traced, profile: {{enabled: true, steps: 4}}}}
        profile: {{top: 5}}
        """)
    _, cases = load_suite(tmp_path / "s.yaml")
    profiled = {(c.variant, c.task): c.profile for c in cases}
    assert profiled[("plain", "latency")] is None and profiled[("traced", "perplexity")] is None
    assert profiled[("traced", "latency")].model_dump() == {
        "enabled": True, "warmup": 1, "steps": 4, "decode_steps": 4, "max_trace_mb": 20.0, "record_shapes": False,
        "profile_memory": False, "with_stack": False, "top": 5}
    _, forced = load_suite(tmp_path / "s.yaml", profile={"steps": 1})
    assert all(c.profile.steps == 1 for c in forced if c.task == "latency")


def test_profile_command_forces_profiling_and_reports_backends_without_a_profiler(tmp_path):
    write_suite(tmp_path / "s.yaml", f"""
        name: ka
        models: [none]
        backends:
          - backend: {KNOWN_ANSWER}
            options: {{token_delay_s: 0.001}}
        workloads: [{{batch_size: 1, prompt_tokens: 4, new_tokens: 3}}]
        tasks: [latency, perplexity]
        repetitions: {{warmup: 0, min: 2, max: 2}}
        perplexity: {{window: 8, stride: 4, max_tokens: 64}}
        """)
    out = run_bench("profile", "s.yaml", "--run-id", "p1", "--steps", "1", cwd=tmp_path)
    assert "tensorboard --logdir results/p1/traces" in out.stdout
    records = {r.task: r for r in load_records(tmp_path / "results/p1")}
    latency = records["latency"]
    assert latency.case.profile.enabled and latency.case.profile.steps == 1
    assert latency.profile.profiler == "none"
    assert records["perplexity"].profile is None  # only latency cases are profiled
    assert "enabled: true" in (tmp_path / "results/p1/suite.yaml").read_text()  # what --resume reruns
    report = (tmp_path / "reports/p1/report.md").read_text()
    assert "## Where the time goes: " in report and "has no profiler hook" in report
    # profiling changes the case, so its id differs from the unprofiled case's
    unprofiled = run_bench("validate", "s.yaml", cwd=tmp_path).stdout
    assert latency.id not in unprofiled


def test_profile_command_rejects_bad_input(tmp_path):
    err = run_bench("profile", "missing.yaml", cwd=tmp_path, check_exit=2).stderr
    assert "missing.yaml" in err and "Traceback" not in err
    write_suite(tmp_path / "s.yaml", f"""
        name: ka
        models: [none]
        backends: [{{backend: "{KNOWN_ANSWER}"}}]
        """)
    err = run_bench("profile", "s.yaml", "--steps", "0", cwd=tmp_path, check_exit=2).stderr
    assert "profile.steps" in err and "Traceback" not in err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tensorboard_runs(logdir: Path, wanted: str, timeout_s: float = 120) -> list[str]:
    """Start TensorBoard on logdir, poll the PyTorch profiler plugin until `wanted` is listed, stop it."""
    port = _free_port()
    tb = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1",
                           "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, runs = time.monotonic() + timeout_s, []
        while time.monotonic() < deadline and tb.poll() is None:
            try:
                url = f"http://127.0.0.1:{port}/data/plugin/pytorch_profiler/runs"
                with urllib.request.urlopen(url, timeout=5) as resp:
                    runs = json.load(resp)["runs"]
                if wanted in runs:
                    views = urllib.request.urlopen(
                        f"http://127.0.0.1:{port}/data/plugin/pytorch_profiler/views?run={wanted}", timeout=10)
                    return runs + [f"views:{','.join(json.load(views))}"]
            except OSError:
                pass  # not listening yet
            time.sleep(1)
        raise AssertionError(f"TensorBoard did not list run {wanted} within {timeout_s} s (runs: {runs}, "
                             f"exit code: {tb.poll()})")
    finally:
        tb.terminate()
        try:
            tb.wait(timeout=10)
        except subprocess.TimeoutExpired:
            tb.kill()
            tb.wait()


@pytest.mark.slow
def test_profiled_case_trace_opens_in_tensorboard_and_report_shows_where_time_goes(tmp_path, tiny_llama):
    for module, extra in [("torch", "hf"), ("tensorboard", "profile"), ("torch_tb_profiler", "profile")]:
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed: pip install 'bench[{extra}]'")
    probe_log = tmp_path / "probe.log"
    write_suite(tmp_path / "s.yaml", f"""
        name: prof
        models: ["{tiny_llama}"]
        backends:
          - backend: tests.profiler_probe_backend:ProfilerProbe
            label: profiled
            options: {{probe_log: "{probe_log}"}}
            profile: {{enabled: true, warmup: 1, steps: 2, record_shapes: true}}
        workloads: [{{batch_size: 1, prompt_tokens: 32, new_tokens: 8}}]
        tasks: [latency]
        repetitions: {{warmup: 2, min: 3, max: 6, max_time_s: 2}}
        timeout_s: 300
        """)
    run_bench("run", "s.yaml", "--run-id", "r", cwd=tmp_path)
    records = {r.variant: r for r in load_records(tmp_path / "results/r")}
    profiled = records["profiled"]
    summary = profiled.profile
    assert summary.error is None and summary.profiler == "torch.profiler"
    trace_dir = tmp_path / "results/r" / summary.trace_dir
    traces = sorted(trace_dir.glob("*.pt.trace.json.gz"))  # gzipped: TensorBoard's plugin reads them as is
    assert len(traces) == 2 and not list(trace_dir.glob("*.json"))  # the warm-up generation's trace is discarded
    assert summary.trace_bytes == sum(p.stat().st_size for p in traces) < summary.trace_budget_bytes == 20e6
    for trace in traces:
        events = json.loads(gzip.decompress(trace.read_bytes()))["traceEvents"]
        names = [e.get("name", "") for e in events]
        assert names.count("bench/prefill") == names.count("bench/decode") == 1
        # bounded: the prompt's forward and decode_steps (4) more, never the whole 8-token generation
        assert names.count("aten::embedding") == 1 + summary.decode_steps == 5

    # Profiling ran after the measurement, never during it: every warm-up and timed generation ran with
    # the profiler off, and only then the profiled ones (1 discarded warm-up, 2 kept). Structural, because
    # timing comparisons between cases are too noisy on a shared machine to detect a profiler's overhead.
    calls = probe_log.read_text().split()
    # each of the case's processes warms up, then the measured repetitions; the last process profiles after them
    n_timed = 2 * profiled.latency.processes + profiled.latency.repetitions
    assert calls == ["measured"] * n_timed + ["profiled"] * 3, calls

    report = (tmp_path / "reports/r/report.md").read_text()
    section = report.split("## Where the time goes: profiled", 1)[1].split("\n## ", 1)[0]
    link = re.search(r"\]\((\.\./\.\./results/r/traces/[^)]+)\)", section).group(1)
    assert (tmp_path / "reports/r" / link).resolve() == trace_dir.resolve()
    shares = re.findall(r"^\| (attention|matmul|other) \| ([\d.]+) % \|", section, flags=re.MULTILINE)
    assert [c for c, _ in shares] == ["attention", "matmul", "other"]
    assert sum(float(p) for _, p in shares) == pytest.approx(100, abs=0.2)
    ops = re.findall(r"^\| `([^`]+)` \| (\w+) \| (\d+) \| ([\d.e+]+) \| ([\d.]+) % \|", section, flags=re.MULTILINE)
    assert len(ops) == 10 and all(float(us) > 0 for *_, us, _ in ops)
    assert "aten::mm" in [name for name, *_ in ops]  # a Llama's time on CPU: the linear layers
    self_times = [float(us) for *_, us, _ in ops]
    assert self_times == sorted(self_times, reverse=True)

    listed = _tensorboard_runs(tmp_path / "results/r/traces", trace_dir.name)
    assert any(v.startswith("views:") and "Operator" in v for v in listed), listed


@pytest.mark.slow
def test_a_trace_over_its_budget_is_dropped_and_the_report_says_so(tmp_path, tiny_llama):
    write_suite(tmp_path / "s.yaml", f"""
        name: prof
        models: ["{tiny_llama}"]
        backends:
          - backend: hf-eager
            profile: {{enabled: true, warmup: 0, steps: 2, max_trace_mb: 0.001}}
        workloads: [{{batch_size: 1, prompt_tokens: 16, new_tokens: 4}}]
        tasks: [latency]
        repetitions: {{warmup: 1, min: 3, max: 3}}
        timeout_s: 300
        """)
    run_bench("run", "s.yaml", "--run-id", "r", cwd=tmp_path)
    (record,) = load_records(tmp_path / "results/r")
    assert record.ok and record.profile.generations_profiled == 0 and record.profile.trace_bytes == 0
    assert "past their budget of 0.001 MB" in record.profile.traces_dropped
    assert not list((tmp_path / "results/r" / record.profile.trace_dir).iterdir())
    report = (tmp_path / "reports/r/report.md").read_text()
    assert "Trace budget: trace 1 was dropped" in report


def test_runtime_traces_are_gzipped_and_kept_within_the_budget(tmp_path):
    small, big = tmp_path / "a.json", tmp_path / "b.json"
    small.write_text(json.dumps({"traceEvents": [{"name": "x"}] * 10}))
    big.write_bytes(os.urandom(300_000))  # incompressible
    kept, why = compress_and_budget(tmp_path, 100_000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json.gz"]
    assert kept == (tmp_path / "a.json.gz").stat().st_size
    assert "dropped b.json.gz" in why and json.loads(gzip.decompress((tmp_path / "a.json.gz").read_bytes()))
