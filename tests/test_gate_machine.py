"""Verdicts that know the machine (bench/gate/machine.py): a timing measured in materially different machine states
is inconclusive, never a regression; memory and quality are judged as before; `--ignore-machine-state` restores the
old verdicts and says so; a contended re-measurement confirms nothing; `bench run` ends with the contended count.

The recorded false alarm is ../shared/fixtures/aa-contended-{1,2} (two smoke runs, the second while others kept
1.3-1.4 of 2 CPUs busy; BENCH_FIXTURES names another folder holding them). The synthetic pairs are the checked-in
format-1 known-answer run (tests/data/runs/v1-fixture, its finished cases) written again as format-2 runs with
the project's writers, with machine states and slowdowns set in-process."""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from bench.gate import machine
from bench.gate.compare import compare_runs, confirm, rule_from
from bench.gate.result import Comparison, GateResult, Verdict, read_result
from bench.measure.latency import derive
from bench.records import load_run
from bench.records.rundir import RunDir
from bench.records.schema import (
    CaseRecord,
    CaseSpec,
    LoadLevel,
    MachineState,
    RunMeta,
    ServingInfo,
    ServingLevel,
    ServingSettings,
)
from tests.conftest import KNOWN_ANSWER, ROOT, run_bench, write_suite

FIXTURES = Path(os.environ.get("BENCH_FIXTURES", ROOT.parent / "shared" / "fixtures"))
V1 = ROOT / "tests" / "data" / "runs" / "v1-fixture"
SLOWED = "slow.synthetic.b1-p8-n6.95c75550"  # a latency case of the v1 fixture
PROCESS_JITTER = (1.0, 1.01, 0.99)  # each latency case's 8 recorded repetitions, as measured by 3 processes


def state(load: float, contended: bool | None = None, **clocks) -> MachineState:
    return MachineState(cpus=2, other_cpu_load_mean=load, other_cpu_load_max=load,
                        contended=load >= 0.5 if contended is None else contended, **clocks)


QUIET, BUSY = state(0.05), state(1.4)


# ---------------------------------------------------------------- the rule, known answers

def test_one_side_contended_is_a_difference_with_both_loads():
    (reason,) = machine.reasons(state(0.45, False), state(0.55, True))  # loads 0.1 apart: only the flag differs
    assert reason.startswith("measured contended in the current run only") and "0.45 vs 0.55 of 2 CPUs" in reason
    (reason,) = machine.reasons(state(0.55, True), state(0.45, False))
    assert "in the baseline run only" in reason
    assert machine.reasons(state(0.6), state(0.9)) == []  # both contended, 0.3 CPU apart: alike


def test_other_processes_load_differing_by_half_a_cpu():
    (reason,) = machine.reasons(state(1.0), state(1.5))
    assert "other processes kept 1.00 vs 1.50 of 2 CPUs busy" in reason and ">= 0.5 CPU" in reason
    assert machine.reasons(state(1.0), state(1.49)) == []
    assert machine.reasons(state(1.5), state(0.95)) != []  # either direction


def test_cpu_clock_range_differing_by_5_percent():
    base = {"cpu_mhz_min": 2000.0, "cpu_mhz_max": 3000.0}
    (reason,) = machine.reasons(state(0.1, **base), state(0.1, cpu_mhz_min=1890.0, cpu_mhz_max=3000.0))  # -5.5 %
    assert reason == "CPU clock 2000-3000 MHz vs 1890-3000 MHz (baseline vs current; differ by >= 5%)"
    assert machine.reasons(state(0.1, **base), state(0.1, cpu_mhz_min=1910.0, cpu_mhz_max=3000.0)) == []  # -4.5 %
    assert machine.reasons(state(0.1, **base), state(0.1, cpu_mhz_min=2000.0, cpu_mhz_max=3200.0)) != []  # top +6.7 %
    assert machine.reasons(state(0.1, **base), state(0.1)) == []  # a side the kernel told no frequency: not compared


def test_gpu_clock_differing_by_5_percent():
    (reason,) = machine.reasons(state(0.1, gpu_clock_mhz_min=1980.0), state(0.1, gpu_clock_mhz_min=1800.0))
    assert reason == "lowest GPU SM clock 1980 vs 1800 MHz (baseline vs current; differ by >= 5%)"
    assert machine.reasons(state(0.1, gpu_clock_mhz_min=1980.0), state(0.1, gpu_clock_mhz_min=1900.0)) == []


def test_another_process_on_the_gpu_on_one_side_only():
    (reason,) = machine.reasons(state(0.1, gpu_other_processes=0), state(0.1, gpu_other_processes=1))
    assert reason == "other processes on the GPU: 0 vs 1 (baseline vs current)"
    assert machine.reasons(state(0.1, gpu_other_processes=2), state(0.1, gpu_other_processes=3)) == []  # both sides
    assert machine.reasons(state(0.1), state(0.1, gpu_other_processes=1)) == []  # not recorded on one side


def test_run_queue_wait_shares_implying_slowdowns_5_percent_apart():
    # both sides contended and < 0.5 CPU apart (a saturated machine: the others' load flattens), yet the measured
    # process waited 74 % vs 86 % of its ready time: 3.85x vs 7.14x from waiting alone
    (reason,) = machine.reasons(state(1.70, run_queue_wait_share=0.74), state(1.85, run_queue_wait_share=0.86))
    assert reason.startswith("the measured process waited for a CPU 74.0% vs 86.0% of the time it was ready")
    assert "3.85x vs 7.14x" in reason
    assert machine.reasons(state(0.1, run_queue_wait_share=0.02), state(0.2, run_queue_wait_share=0.09)) != []  # 7 %
    assert machine.reasons(state(0.1, run_queue_wait_share=0.02), state(0.2, run_queue_wait_share=0.05)) == []  # 3 %
    assert machine.reasons(state(0.1, run_queue_wait_share=0.5), state(0.1)) == []  # not recorded on one side


def test_the_probe_reads_the_run_queue_wait_of_a_process_sharing_its_cpu():
    """A busy process pinned to one CPU with two busy neighbours pinned there too gets at most a third of it: it
    waits for the CPU at least about half of its ready time, whatever else the machine does."""
    import subprocess
    import sys
    import time

    from bench.measure.machine import Probe

    if not Path("/proc/self/task").is_dir() or not hasattr(os, "sched_setaffinity"):
        pytest.skip("no /proc schedstat or CPU affinity on this platform")
    cpu = min(os.sched_getaffinity(0))
    spin = f"import os, time\nos.sched_setaffinity(0, {{{cpu}}})\nt = time.time()\nwhile time.time() - t < 20: pass"
    procs = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(3)]
    try:
        time.sleep(1.0)
        reading = Probe(procs[0].pid).start()
        time.sleep(1.5)
        share = reading.stop().run_queue_wait_share
    finally:
        for proc in procs:
            proc.kill()
    if share is None:
        pytest.skip("the kernel keeps no schedstat for tasks")
    assert 0.45 <= share <= 1.0


def test_a_side_without_a_recorded_state_is_not_compared_and_said_only_when_relevant():
    assert machine.difference(None, BUSY) is None and machine.difference(QUIET, None) is None
    assert machine.missing_note(None, QUIET) == "" and machine.missing_note(None, None) == ""
    note = machine.missing_note(None, BUSY)
    assert "the baseline run recorded no machine state" in note and "1.40 of 2 CPUs" in note
    found = machine.difference(QUIET, BUSY)
    assert found is not None and found.baseline == QUIET and found.current == BUSY


def test_serving_compares_the_clients_own_cpu():
    def level(client_cpu: float) -> ServingLevel:
        return ServingLevel(key="c1", label="1 user", load=LoadLevel(concurrency=1),
                            metrics={"serve_client_cpu": client_cpu})

    found = machine.serving_difference(level(0.2), level(0.75))
    assert found is not None and found.reasons == [
        "the client itself kept 0.20 vs 0.75 CPUs busy (baseline vs current; differ by >= 0.5 CPU)"]
    assert machine.serving_difference(level(0.2), level(0.6)) is None


def _comparison(metric: str, status: str) -> Comparison:
    return Comparison(case="c", variant="v", metric=metric, unit="", better="lower", method="m", baseline=1.0,
                      current=1.2, ratio=1.2, status=status)


def test_only_gated_timings_are_made_inconclusive():
    found = machine.difference(QUIET, BUSY)
    for metric, status in (("tpot_ms", "regression"), ("decode_tok_s", "improvement"), ("ttft_ms", "unchanged"),
                           ("serve_slo_fraction", "regression")):
        comp = machine.apply(_comparison(metric, status), found)
        assert comp.status == "inconclusive" and comp.machine == found and f"by its interval alone: {status}" in \
            comp.note
    for metric, status in (("peak_rss_bytes", "regression"), ("perplexity", "regression"),
                           ("kld_mean", "improvement"), ("load_s", "not gated"), ("eval_tok_s", "not gated")):
        comp = machine.apply(_comparison(metric, status), found)
        assert comp.status == status and comp.machine is None and comp.note == ""


# ---------------------------------------------------------------- synthetic pairs through the gate

def write_run(results: Path, run_id: str, latency_state: MachineState | None, slow: float = 1.0,
              memory: float = 1.0) -> None:
    """The v1 fixture's finished cases as a format-2 run: every latency case measured in `latency_state` (in three
    processes, PROCESS_JITTER), SLOWED's raw stamps scaled by `slow` (samples and summaries re-derived), every peak
    RSS and perplexity times `memory`."""
    base = load_run(V1)
    records = [r for r in base.records if r.ok]
    run = RunDir(results, run_id)
    run.create(base.meta.model_copy(update={"run_id": run_id, "format_version": 2,
                                            "case_ids": [r.id for r in records]}))
    for record in records:
        record = record.model_copy(deep=True)
        samples = base.samples(record.id)
        if record.latency is not None:
            record.latency.machine = latency_state
        if samples is not None and record.workload is not None:  # its repetitions as if from 3 processes
            factor = slow if record.id == SLOWED else 1.0
            stamps = [[int(s * factor * jitter) for s in rep] for jitter in PROCESS_JITTER for rep in samples.stamps_ns]
            process = [k for k in range(len(PROCESS_JITTER)) for _ in samples.stamps_ns]
            samples, metrics = derive(stamps, record.workload.batch_size, record.workload.prompt_tokens, process)
            record.metrics.update(metrics)
            run.write_samples(record.id, samples)
        for name in ("peak_rss_bytes", "perplexity"):
            if isinstance(record.metrics.get(name), float | int):
                record.metrics[name] = record.metrics[name] * memory
        run.append(record)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("machine")
    for run_id, latency_state, slow, memory in (("quiet", QUIET, 1.0, 1.0), ("quiet-slow", QUIET, 1.10, 1.0),
                                                ("busy-slow", BUSY, 1.10, 1.0), ("busy", BUSY, 1.0, 1.0),
                                                ("busy-heavy", BUSY, 1.0, 1.5), ("older", None, 1.0, 1.0)):
        write_run(root / "results", run_id, latency_state, slow, memory)
    return root


def _compare(root: Path, base: str, cur: str, mode: machine.Mode = "compare") -> GateResult:
    current = load_run(root / "results" / cur)
    return compare_runs(load_run(root / "results" / base), current, rule_from(current), machine_mode=mode)


def _get(result: GateResult, case: str, metric: str) -> Comparison:
    return next(c for c in result.comparisons if c.case == case and c.metric == metric)


def test_a_10_percent_slowdown_between_two_quiet_runs_is_still_a_regression(pairs):
    proc = run_bench("compare", "quiet", "quiet-slow", "--json", "slow.json", cwd=pairs, check_exit=1)
    result = read_result(pairs / "slow.json", "--json")
    tpot = _get(result, SLOWED, "tpot_ms")
    assert tpot.status == "regression" and tpot.ratio == pytest.approx(1.10, rel=1e-3) and tpot.machine is None
    assert not result.ignored_machine_state and "machine state" not in proc.stdout.split("<sub>")[0]


def test_the_same_slowdown_measured_contended_is_inconclusive_with_the_reason(pairs):
    proc = run_bench("compare", "quiet", "busy-slow", "--json", "busy.json", cwd=pairs, check_exit=4)
    result = read_result(pairs / "busy.json", "--json")
    assert not result.with_status("regression")
    tpot = _get(result, SLOWED, "tpot_ms")
    assert tpot.status == "inconclusive" and "by its interval alone: regression" in tpot.note
    assert tpot.machine is not None and tpot.machine.baseline == QUIET and tpot.machine.current == BUSY
    reason = "measured contended in the current run only: other processes kept 0.05 vs 1.40 of 2 CPUs busy"
    assert tpot.machine.reasons[0].startswith(reason)
    assert f"- machine state, `{SLOWED}`: {reason}" in proc.stdout  # under the table, both sides' figures
    assert "because the machine's state differed" in result.verdict_text and result.verdict is Verdict.INCONCLUSIVE
    # --ignore-machine-state: the interval alone, as before, and the output says so
    proc = run_bench("compare", "quiet", "busy-slow", "--ignore-machine-state", "--json", "ignored.json", cwd=pairs,
                     check_exit=1)
    ignored = read_result(pairs / "ignored.json", "--json")
    assert ignored.ignored_machine_state and _get(ignored, SLOWED, "tpot_ms").status == "regression"
    assert not [c for c in ignored.comparisons if c.machine is not None]
    assert "machine state ignored (--ignore-machine-state)" in ignored.verdict_text and "[!NOTE]" in proc.stdout


def test_memory_and_quality_verdicts_are_unaffected_by_the_machine(pairs):
    result = _compare(pairs, "quiet", "busy-heavy")
    assert result.exit_code == 1  # 50 % more memory and perplexity: regressions, whatever the machine did
    for comp in result.comparisons:
        if comp.metric in ("peak_rss_bytes", "perplexity"):
            assert comp.status == "regression" and comp.machine is None, comp
        elif machine.is_timing(comp.metric):
            assert comp.status == "inconclusive" and comp.machine is not None, comp
    assert {c.status for c in result.comparisons if c.metric == "model_size_bytes"} == {"unchanged"}


def test_runs_without_a_recorded_state_are_judged_as_before_and_a_contended_side_is_noted(pairs):
    before = _compare(pairs, "older", "quiet-slow")
    assert _get(before, SLOWED, "tpot_ms").status == "regression"  # a quiet side: nothing worth saying
    assert "machine state" not in _get(before, SLOWED, "tpot_ms").note
    noted = _get(_compare(pairs, "older", "busy-slow"), SLOWED, "tpot_ms")
    assert noted.machine is None and "the baseline run recorded no machine state" in noted.note


def test_a_contended_re_measurement_confirms_nothing(pairs):
    """Both the first run and the re-measurement contended: alike, so a plain compare says regression; as a
    confirmation (--confirming) the contended re-measurement is inconclusive and confirms nothing."""
    first = _compare(pairs, "busy", "busy-slow")
    assert first.exit_code == 1 and _get(first, SLOWED, "tpot_ms").status == "regression"
    again = confirm(first, _compare(pairs, "busy", "busy-slow", mode="confirm"))
    assert again.exit_code == 4 and not again.with_status("regression")
    tpot = next(c for c in again.confirmation if c.case == SLOWED and c.metric == "tpot_ms")
    assert tpot.first == "regression" and tpot.again == "inconclusive" and not tpot.confirmed
    assert "re-measured under contention" in _get(again, SLOWED, "tpot_ms").machine.reasons[0]
    quiet = confirm(first, _compare(pairs, "quiet", "quiet-slow", mode="confirm"))  # a quiet one confirms
    assert next(c for c in quiet.confirmation if c.case == SLOWED and c.metric == "tpot_ms").confirmed
    # through the CLI: --confirming compares in confirm mode
    (pairs / "first.json").write_text(first.model_dump_json())
    proc = run_bench("compare", "busy", "busy-slow", "--confirming", "first.json", cwd=pairs, check_exit=4)
    assert "re-measured under contention" in proc.stdout and "0 regression(s) confirmed" in proc.stdout


def write_serving_run(results: Path, run_id: str, client_cpu: float, rps: float) -> None:
    """A serving run of two closed-loop levels whose records carry known numbers (no raw requests)."""
    levels = [ServingLevel(key=f"c{c}", label=f"closed loop, {c} users", load=LoadLevel(concurrency=c),
                           metrics={"serve_request_rps": rps * c, "serve_error_rate": 0.0,
                                    "serve_client_cpu": client_cpu * c})
              for c in (1, 2)]
    spec = CaseSpec(id="stub.tiny.serving", suite="serving", model="tiny-llama", backend="stub", variant="stub",
                    task="serving", serving=ServingSettings(levels=[lv.load for lv in levels]))
    run = RunDir(results, run_id)
    run.create(RunMeta(run_id=run_id, suite_name="serving", created_at=0.0, case_ids=[spec.id]))
    run.append(CaseRecord(case=spec, status="ok", started_at=0.0, wall_seconds=1.0,
                          serving=ServingInfo(server="stub", levels=levels)))


def test_serving_levels_whose_client_was_busier_are_inconclusive(tmp_path):
    """Client CPU 0.3 / 0.6 (1 / 2 users) against 0.6 / 1.2: level c1 is 0.3 CPU apart, c2 0.6."""
    write_serving_run(tmp_path, "before", client_cpu=0.3, rps=10.0)
    write_serving_run(tmp_path, "after", client_cpu=0.6, rps=8.0)
    base, cur = load_run(tmp_path / "before"), load_run(tmp_path / "after")
    result = compare_runs(base, cur, rule_from(cur))
    rps = {c.case.split("@")[1]: c for c in result.comparisons if c.metric == "serve_request_rps"}
    assert rps["c1"].status == "regression" and rps["c1"].machine is None  # -20 %, clients alike
    assert rps["c2"].status == "inconclusive" and rps["c2"].machine is not None
    assert rps["c2"].machine.reasons == [("the client itself kept 0.60 vs 1.20 CPUs busy (baseline vs current; "
                                         "differ by >= 0.5 CPU)")]
    errors = [c for c in result.comparisons if c.metric == "serve_error_rate"]
    assert errors and all(c.machine is None and c.status == "unchanged" for c in errors)
    ignored = compare_runs(base, cur, rule_from(cur), machine_mode="ignore")
    assert next(c for c in ignored.comparisons if c.case.endswith("@c2") and c.metric == "serve_request_rps").status \
        == "regression"


# ---------------------------------------------------------------- the recorded false alarm

def _fixtures() -> tuple[Path, Path]:
    pair = FIXTURES / "aa-contended-1", FIXTURES / "aa-contended-2"
    if not all((p / "cases.jsonl").exists() for p in pair):
        pytest.skip(f"the recorded contended A/A pair is not at {FIXTURES} (../shared/fixtures next to the "
                    f"repository, or BENCH_FIXTURES)")
    return pair


def test_the_recorded_contended_a_a_pair_is_inconclusive_not_a_regression(tmp_path):
    quiet, busy = _fixtures()
    proc = run_bench("compare", str(quiet), str(busy), "--json", "c.json", "--markdown", "c.md", cwd=tmp_path,
                     check_exit=4)
    result = read_result(tmp_path / "c.json", "--json")
    assert result.exit_code == 4 and not result.with_status("regression")
    before, after = ({r.id: r for r in load_run(p).records} for p in (quiet, busy))
    timed = [c for c in result.comparisons if machine.is_timing(c.metric)]
    assert timed and all(c.status == "inconclusive" and c.machine is not None for c in timed)
    markdown = (tmp_path / "c.md").read_text()
    for case_id in {c.case for c in timed}:
        b, c = (machine.state_of(runs[case_id]) for runs in (before, after))
        assert b is not None and c is not None and not b.contended and c.contended  # as recorded
        figures = f"{b.other_cpu_load_mean:.2f} vs {c.other_cpu_load_mean:.2f} of {c.cpus} CPUs"
        assert f"- machine state, `{case_id}`: measured contended in the current run only: other processes kept " \
               f"{figures}" in markdown
    assert markdown in proc.stdout + "\n"
    untimed = [c for c in result.comparisons if c.metric in ("peak_rss_bytes", "perplexity", "kld_mean")]
    assert untimed and all(c.machine is None and c.status != "inconclusive" for c in untimed)


def test_ignore_machine_state_restores_the_old_verdict_on_the_recorded_pair(tmp_path):
    quiet, busy = _fixtures()
    proc = run_bench("compare", str(quiet), str(busy), "--ignore-machine-state", "--json", "c.json", cwd=tmp_path,
                     check_exit=1)
    result = read_result(tmp_path / "c.json", "--json")
    assert result.ignored_machine_state and result.with_status("regression")
    assert "--ignore-machine-state" in result.verdict_text and "`--ignore-machine-state`" in proc.stdout


# ---------------------------------------------------------------- bench run's last word

def test_bench_run_ends_by_counting_the_latency_cases_measured_contended(tmp_path):
    (tmp_path / "eval.txt").write_text("evaluation text for the known-answer backend " * 20)
    write_suite(tmp_path / "s.yaml", f"""
        name: contended
        models: [synthetic]
        backends:
          - {{backend: "{KNOWN_ANSWER}", label: a, options: {{token_delay_s: 0.001}}}}
        workloads: [{{batch_size: 1, prompt_tokens: 8, new_tokens: 4}}]
        tasks: [latency]
        repetitions: {{warmup: 1, min: 3, max: 3}}
        perplexity: {{text: eval.txt}}
        """)
    proc = run_bench("run", "s.yaml", "--run-id", "r", cwd=tmp_path)
    last = proc.stderr.strip().splitlines()[-1]
    found = re.fullmatch(r"latency cases measured contended \(other processes kept >= 0\.5 CPU busy\): (\d) of (\d)"
                         r"(; compared with a run measured quieter, their timings are inconclusive)?", last)
    assert found, proc.stderr
    records = load_run(tmp_path / "results" / "r").records
    assert (int(found[1]), int(found[2])) == machine.contended_cases(records)
    assert int(found[2]) == 1 and (found[3] is not None) == (found[1] == "1")
    shutil.rmtree(tmp_path / "results")
