"""The memory sampler: a known allocation is seen, a large parent does not leak into a case's peak,
a child process's memory is counted, and GPU metrics say why they do not apply here."""
import os
import subprocess
import sys
import textwrap
import time

import numpy as np

from bench.measure.memory import MemorySampler, vm_hwm_bytes
from tests.conftest import KNOWN_ANSWER, ROOT, load_records, run_bench, write_suite

MIB = 1024 * 1024


def test_peak_rss_includes_a_known_allocation():
    sampler = MemorySampler().start()
    block = np.ones(256 * MIB // 8)  # 256 MiB, touched
    del block
    result = sampler.stop().metrics
    assert result["peak_rss_delta_bytes"] >= 250 * MIB
    assert result["peak_rss_bytes"] >= result["baseline_rss_bytes"] + 250 * MIB


def test_gpu_metrics_are_not_applicable_without_a_gpu_rather_than_zero():
    reading = MemorySampler().start().stop()
    assert reading.metrics["cuda_max_allocated_bytes"] is None
    assert "cuda" in reading.not_applicable
    if reading.metrics["nvml_peak_process_bytes"] is None:
        assert reading.not_applicable["nvml"].startswith(("NVML unavailable", "pynvml not installed"))


def test_a_child_process_memory_is_counted_in_the_case_peak():
    """The case (a fresh small process, as a worker is) starts a child that holds 200 MiB for 1.5 s: the tree's
    sampled peak counts it. Not this test process as the case: the tree is measured by PSS and the baseline by
    RSS, and a large process's PSS falls short of its RSS by its share of the library pages other processes on
    the machine map too (torch's, in a test run beside others): that gap, not the child, decided the check."""
    child = "import time, numpy; a = numpy.ones(200 * 2**20 // 8); time.sleep(1.5)"
    starts_child = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}], check=True)"
    case = subprocess.Popen([sys.executable, "-c", starts_child])
    sampler = MemorySampler(pid=case.pid).start()
    case.wait()
    reading = sampler.stop()
    assert case.returncode == 0 and reading.metrics["processes_sampled"] >= 2
    assert reading.metrics["peak_rss_sampled_bytes"] >= reading.metrics["baseline_rss_bytes"] + 190 * MIB


def test_a_forked_child_sharing_its_parents_pages_is_not_counted_twice():
    """A fork shares every page with its parent until written: summed RSS would count 300 MiB twice, PSS once."""
    block = np.ones(300 * MIB // 8)  # touched before the fork: shared copy-on-write afterwards
    sampler = MemorySampler().start()
    pid = os.fork()
    if pid == 0:  # the child only holds the shared pages for a while
        time.sleep(2.5)
        os._exit(0)
    os.waitpid(pid, 0)
    reading = sampler.stop()
    del block
    assert reading.metrics["processes_sampled"] >= 2
    # counted twice, the tree would be >= 600 MiB above the baseline's other memory; once, it stays near it
    assert reading.metrics["peak_rss_sampled_bytes"] < reading.metrics["baseline_rss_bytes"] + 150 * MIB
    assert reading.metrics["peak_rss_sampled_bytes"] >= 300 * MIB


PARENT = textwrap.dedent("""
    import subprocess, sys
    import numpy
    hog = numpy.ones(1024 * 2**20 // 8)  # 1 GiB, touched: the parent's own high-water mark
    sys.exit(subprocess.run([sys.executable, "-m", "bench", "run", "s.yaml", "--run-id", "r"]).returncode)
""")


def test_a_large_parent_does_not_leak_into_a_case_peak(tmp_path):
    """ru_maxrss survives fork+exec: a 1 GiB runner made every case report >= 1 GiB. VmHWM starts at exec."""
    (tmp_path / "eval.txt").write_text("evaluation text " * 30)
    write_suite(tmp_path / "s.yaml", f"""
        name: mem
        models: [none]
        backends: [{{backend: "{KNOWN_ANSWER}", options: {{token_delay_s: 0.001}}}}]
        workloads: [{{batch_size: 1, prompt_tokens: 4, new_tokens: 3}}]
        tasks: [latency]
        repetitions: {{warmup: 0, min: 6, max: 6}}
        perplexity: {{text: eval.txt}}
        """)
    proc = subprocess.run([sys.executable, "-c", PARENT], cwd=tmp_path, capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (record,) = load_records(tmp_path / "results" / "r")
    assert record.ok
    # a known-answer case is an interpreter with numpy, scipy and pydantic: well under the parent's 1 GiB
    assert record.value("peak_rss_bytes") < 400 * MIB
    assert record.value("vm_hwm_bytes") <= record.value("peak_rss_bytes")


def test_vm_hwm_reads_this_process():
    hwm = vm_hwm_bytes()
    assert hwm is not None and hwm > 10 * MIB


def test_the_shipped_cli_reports_memory_per_case(tmp_path):
    (tmp_path / "eval.txt").write_text("evaluation text " * 30)
    write_suite(tmp_path / "s.yaml", f"""
        name: mem
        models: [none]
        backends: [{{backend: "{KNOWN_ANSWER}"}}]
        workloads: [{{batch_size: 1, prompt_tokens: 4, new_tokens: 3}}]
        tasks: [latency]
        repetitions: {{warmup: 0, min: 6, max: 6}}
        perplexity: {{text: eval.txt}}
        """)
    run_bench("run", "s.yaml", "--run-id", "m", cwd=tmp_path)
    (record,) = load_records(tmp_path / "results" / "m")
    assert record.value("peak_rss_bytes") >= record.value("baseline_rss_bytes") > 0
