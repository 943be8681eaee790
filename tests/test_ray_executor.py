"""The Ray executor on a real local Ray cluster (127.0.0.1 only): a head and worker nodes with their own
resources, a suite run across them through the real CLI, nodes killed mid-unit, and a resume across executors.

Each run is checked against the invariants of a local run: every case recorded exactly once by the one writer,
samples and logs in the run directory (the reference's log-probabilities in the cache), each record stamped
with the machine (and the Ray node) that ran it, the same known answers as the local executor.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

# before ray is imported: no token auth for a throwaway local cluster, and loopback stays loopback
os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
cluster_utils = pytest.importorskip("ray.cluster_utils", reason="ray is not installed: pip install 'bench[ray]'")

from bench.measure import refcache
from tests.conftest import CONTENDED_CPUS, KNOWN_ANSWER, ROOT, record_lines, recorded_load, run_bench, write_suite

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
LOOPBACK = "127.0.0.1"


@pytest.fixture(scope="module")
def cluster():
    """A head (1 CPU) and one worker node (1 CPU, resource `pool`), both on 127.0.0.1."""
    made = cluster_utils.Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "resources": {"head": 1}, "node_ip_address": LOOPBACK, "include_dashboard": False})
    made.add_node(num_cpus=1, resources={"pool": 1}, node_ip_address=LOOPBACK)
    made.wait_for_nodes()
    yield made
    made.shutdown()


def _suite(path: Path, extra: str = "", delays: tuple[float, float] = (0.002, 0.004), tokens: int = 4,
           reps: int = 4) -> Path:
    (path.parent / "eval.txt").write_text("the evaluation text of the known-answer backend " * 4)
    return write_suite(path, f"""
        name: cluster
        models: [synthetic]
        backends:
          - {{backend: "{KNOWN_ANSWER}", label: a, options: {{token_delay_s: {delays[0]}}}}}
          - {{backend: "{KNOWN_ANSWER}", label: b, options: {{token_delay_s: {delays[1]}}}}}
        reference: a
        workloads: [{{batch_size: 1, prompt_tokens: 8, new_tokens: {tokens}}},
                    {{batch_size: 2, prompt_tokens: 8, new_tokens: {tokens}}}]
        tasks: [latency, perplexity]
        repetitions: {{warmup: 0, min: {reps}, max: {reps}, processes: 1}}
        perplexity: {{text: eval.txt, window: 16, stride: 8}}
        timeout_s: 60
        {extra}
        """)


def _ray_run(cwd: Path, cluster, *args: str, check_exit: int | None = 0) -> subprocess.CompletedProcess:
    return run_bench("run", *args, "--executor", "ray", "--address", cluster.address, cwd=cwd, timeout=240,
                     check_exit=check_exit)


def _start_ray_run(cwd: Path, cluster, *args: str) -> tuple[subprocess.Popen, Path]:
    stderr = cwd / "driver.err"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "bench", "run", *args, "--executor", "ray", "--address",
                             cluster.address], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=open(stderr, "w"), start_new_session=True)  # noqa: SIM115 - the child owns it
    return proc, stderr


def _wait_until_started_on(node_id: str, proc: subprocess.Popen, stderr: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while f"started on node {node_id[:12]}" not in stderr.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, stderr.read_text()
        time.sleep(0.05)


def _unit_processes() -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "bench.run.cluster.unit_process" in cmdline and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(proc)
    return found


def test_a_suite_runs_across_two_nodes_with_the_local_executors_answers(tmp_path, cluster):
    _suite(tmp_path / "suite.yaml")
    run_bench("run", "suite.yaml", "--run-id", "local", cwd=tmp_path)
    proc = _ray_run(tmp_path, cluster, "suite.yaml", "--run-id", "ray")
    assert "prepared in" in proc.stderr and "ray: 2 node(s), 3 unit(s)" in proc.stderr
    local, ray = (record_lines(tmp_path / "results" / name) for name in ("local", "ray"))
    # the same cases, each recorded exactly once, by the one writer on the driver
    assert sorted(r.id for r in ray) == sorted(r.id for r in local) and len({r.id for r in ray}) == len(ray) == 6
    assert all(r.ok for r in ray)
    run_dir = tmp_path / "results" / "ray"
    assert not (run_dir / "reference").exists()  # the reference's log-probabilities stay in the node's cache
    for folder in ("logs", "cases", "samples"):  # every file a local run writes came back
        written = {(tmp_path / "results" / name / folder): None for name in ("local", "ray")}
        local_files, ray_files = ({p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file()} for d in written)
        assert local_files == ray_files and ray_files, folder
    for r in ray:
        if r.task == "latency":
            assert len(json.loads((run_dir / "samples" / f"{r.id}.json").read_text())["stamps_ns"]) == 4
            assert "=== process 1 ===" in (run_dir / "logs" / f"{r.id}.log").read_text()
    # both nodes ran units, and every record names its machine (same hardware here: one machine_id)
    nodes = {n.node_id for n in cluster.list_all_nodes()}
    assert {r.machine.node for r in ray} == nodes
    assert {r.machine.machine_id for r in ray} == {r.machine.machine_id for r in local}
    assert all(r.machine.node is None for r in local)
    # the same known answers: perplexity is exact, quality vs the reference is exact, latency is the injected delay
    by_id = {r.id: r for r in local}
    for r in ray:
        if r.task == "perplexity":
            assert r.value("perplexity") == by_id[r.id].value("perplexity")
            if r.variant == "b":
                assert r.value("kld_mean") == 0 and r.value("top1_agreement") == 1
        else:
            delay_ms = {"a": 2.0, "b": 4.0}[r.variant]  # a busy-wait: never less; more when the 2 CPUs are shared
            assert delay_ms <= r.value("tpot_ms") and delay_ms <= by_id[r.id].value("tpot_ms")
            if recorded_load([r, by_id[r.id]]) < CONTENDED_CPUS:  # the upper bound needs CPUs to itself
                assert r.value("tpot_ms") < 5 * delay_ms and by_id[r.id].value("tpot_ms") < 5 * delay_ms
    report = (tmp_path / "reports" / "ray" / "report.md").read_text()
    assert "## Machines" not in report  # one kind of machine: no per-machine split


def test_a_node_killed_mid_unit_fails_only_that_units_cases_then_resume_finishes_locally(tmp_path, cluster):
    """Latency units only: each waits 2 x 30 x 10 x 10 ms = 6 s in its injected delays alone, so the victim's unit is
    still measuring when the node dies a second after it started, however fast the machine (a perplexity unit
    could finish there first on a quiet one, and nothing would be lost). Three workloads, three units (both
    variants of a workload are one interleaved unit), three 1-CPU nodes: one unit always lands on the victim
    (with two units Ray could leave it idle, and the run finished without it)."""
    victim = cluster.add_node(num_cpus=1, resources={"victim": 1}, node_ip_address=LOOPBACK)
    cluster.wait_for_nodes()
    _suite(tmp_path / "suite.yaml", delays=(0.01, 0.01), tokens=10, reps=30)
    suite = tmp_path / "suite.yaml"
    suite.write_text(suite.read_text().replace("tasks: [latency, perplexity]", "tasks: [latency]").replace(
        "{batch_size: 2, prompt_tokens: 8, new_tokens: 10}]",
        "{batch_size: 2, prompt_tokens: 8, new_tokens: 10}, {batch_size: 3, prompt_tokens: 8, new_tokens: 10}]"))
    proc, stderr = _start_ray_run(tmp_path, cluster, "suite.yaml", "--run-id", "r")
    try:
        _wait_until_started_on(victim.node_id, proc, stderr)
        time.sleep(1.0)  # its case workers are measuring
    finally:  # a victim left alive would offer its resource to the next test's victim-bound units
        cluster.remove_node(victim, allow_graceful=False)
    assert proc.wait(timeout=240) == 3, stderr.read_text()
    records = record_lines(tmp_path / "results" / "r")
    assert len(records) == len({r.id for r in records}) == 6  # nothing lost, nothing recorded twice
    lost = [r for r in records if r.status == "failed"]
    assert lost and all(r.reason.startswith("node lost") and victim.node_id[:12] in r.reason for r in lost)
    assert all(r.machine.node == victim.node_id for r in lost)
    assert {r.task for r in lost} <= {"latency", "perplexity"} and len({r.workload for r in lost}) == 1
    assert all(r.ok for r in records if r not in lost)
    assert not _unit_processes()  # the lost unit's processes died with their node
    # the failed cases run again with the local executor: a run is resumable whichever executor ran it
    resumed = run_bench("run", "--resume", "r", "--retry-failed", cwd=tmp_path)
    assert f"{6 - len(lost)} of 6 cases already finished" in resumed.stderr
    final = {r.id: r for r in record_lines(tmp_path / "results" / "r")}
    assert len(final) == 6 and all(r.ok for r in final.values())


def test_units_waiting_for_a_node_that_died_fail_instead_of_waiting_forever(tmp_path, cluster):
    victim = cluster.add_node(num_cpus=1, resources={"victim": 1}, node_ip_address=LOOPBACK)
    cluster.wait_for_nodes()
    _suite(tmp_path / "suite.yaml", "cluster: {resources: {victim: 1}}", delays=(0.01, 0.01), tokens=10, reps=30)
    proc, stderr = _start_ray_run(tmp_path, cluster, "suite.yaml", "--run-id", "r")
    try:
        _wait_until_started_on(victim.node_id, proc, stderr)
    finally:  # the only node the units fit on; two are still queued
        cluster.remove_node(victim, allow_graceful=False)
    assert proc.wait(timeout=120) == 3, stderr.read_text()
    records = record_lines(tmp_path / "results" / "r")
    assert len(records) == len({r.id for r in records}) == 6 and not any(r.ok for r in records)
    waited = "no live node of the cluster offers what this unit needs any more (1 CPU, 0 GPU, 1 victim)"
    assert sorted(r.reason.split(":")[0] for r in records) == [waited] * 4 + ["node lost"] * 2


def test_a_lost_unit_runs_again_elsewhere_when_the_suite_allows_it(tmp_path, cluster):
    """Every unit needs `spare` (variant b asks for it), which only the victim offers when the run starts; every
    worker hangs at load until the file `go` exists. So the victim's unit cannot finish whatever the machine's
    speed (a fixed sleep before the kill let a quick perplexity unit finish there first on a quiet machine); the
    test then adds a node with `spare`, kills the victim, and creates `go`: the lost unit's cases and the waiting
    units run on the new node, each case recorded once, none from the victim."""
    victim = cluster.add_node(num_cpus=1, resources={"victim": 1, "spare": 1}, node_ip_address=LOOPBACK)
    cluster.wait_for_nodes()
    _suite(tmp_path / "suite.yaml", "cluster: {retry_lost_units: 1, variants: {b: {resources: {spare: 1}}}}")
    suite = (tmp_path / "suite.yaml").read_text()
    go = tmp_path / "go"
    for delay in ("0.002", "0.004"):
        suite = suite.replace(f"options: {{token_delay_s: {delay}}}",
                              f"options: {{token_delay_s: {delay}, fail: hang, fail_marker: {go}}}")
    (tmp_path / "suite.yaml").write_text(suite)
    proc, stderr = _start_ray_run(tmp_path, cluster, "suite.yaml", "--run-id", "r")
    spare = None
    try:
        _wait_until_started_on(victim.node_id, proc, stderr)
        spare = cluster.add_node(num_cpus=1, resources={"spare": 1}, node_ip_address=LOOPBACK)
        cluster.wait_for_nodes()
        cluster.remove_node(victim, allow_graceful=False)
        go.touch()  # only now: `go` before the kill let the victim's unit finish first on a quiet machine
        assert proc.wait(timeout=240) == 0, stderr.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        if spare is not None:
            cluster.remove_node(spare, allow_graceful=False)
    assert "unfinished case(s) again" in stderr.read_text()
    records = record_lines(tmp_path / "results" / "r")
    assert len(records) == len({r.id for r in records}) == 6 and all(r.ok for r in records)
    assert victim.node_id not in {r.machine.node for r in records}


def test_a_resumed_perplexity_unit_gets_the_reference_it_did_not_write_and_unplaceable_units_fail(tmp_path, cluster):
    _suite(tmp_path / "suite.yaml")
    suite = (tmp_path / "suite.yaml").read_text()
    (tmp_path / "suite.yaml").write_text(suite.replace("options: {token_delay_s: 0.004}",
                                                       "options: {token_delay_s: 0.004, fail: raise, fail_marker: ok}"))
    run_bench("run", "suite.yaml", "--run-id", "r", cwd=tmp_path, check_exit=3)  # locally: b fails
    (tmp_path / "ok").touch()
    written = next(r for r in record_lines(tmp_path / "results" / "r") if r.variant == "a" and r.task == "perplexity")
    shutil.rmtree(refcache.entry_path(written.perplexity.reference_logprobs))  # as on a node whose cache never had it
    _ray_run(tmp_path, cluster, "--resume", "r", "--retry-failed")
    final = {r.id: r for r in record_lines(tmp_path / "results" / "r")}
    b_perplexity = next(r for r in final.values() if r.variant == "b" and r.task == "perplexity")
    assert b_perplexity.ok and b_perplexity.machine.node is not None
    # its reference (a) ran locally before; its record went with the unit, the node computed its entry again
    a_perplexity = next(r for r in final.values() if r.variant == "a" and r.task == "perplexity")
    assert b_perplexity.value("kld_mean") == 0 and "quality" not in b_perplexity.not_applicable
    assert b_perplexity.perplexity.reference_recomputed is True
    assert b_perplexity.perplexity.reference_logprobs == a_perplexity.perplexity.reference_logprobs

    (tmp_path / "nowhere.yaml").write_text(suite.replace("name: cluster", "name: nowhere") +
                                           "cluster: {resources: {no-such-resource: 1}}\n")
    proc = _ray_run(tmp_path, cluster, "nowhere.yaml", "--run-id", "n", check_exit=3)
    records = record_lines(tmp_path / "results" / "n")
    assert len(records) == 6 and all(r.reason.startswith("no node of the cluster offers") for r in records)
    assert "1 no-such-resource" in records[0].reason and "prepared in" in proc.stderr


def test_a_real_tiny_llama_case_runs_on_a_node_and_its_profiler_traces_come_back(tmp_path, cluster, tiny_llama):
    write_suite(tmp_path / "suite.yaml", """
        name: tiny
        models: [tiny-llama]
        backends: [{backend: hf-eager}]
        workloads: [{batch_size: 1, prompt_tokens: 16, new_tokens: 4}]
        tasks: [latency]
        repetitions: {warmup: 1, min: 4, max: 4, processes: 1}
        profile: {enabled: true, warmup: 0, steps: 1, decode_steps: 1}
        timeout_s: 240
        """)
    _ray_run(tmp_path, cluster, "suite.yaml", "--run-id", "t")
    [record] = record_lines(tmp_path / "results" / "t")
    assert record.ok and record.machine.node is not None and record.model_path == tiny_llama
    assert record.value("tpot_ms") > 0 and record.latency.repetitions == 4
    traces = tmp_path / "results" / "t" / record.profile.trace_dir
    assert record.profile.files and sorted(p.relative_to(traces).as_posix() for p in traces.rglob("*")
                                           if p.is_file()) == record.profile.files
