"""The interleaved runner in its parts: the typed pipe messages (bench/exec/protocol.py), the worker-process handle
(bench/run/handle.py) on real known-answer workers, the schedule (bench/run/interleave.py) with scripted workers
whose answers are known, and the record (bench/run/latency_record.py) built from hand-made measured rounds."""
from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from pydantic import ValidationError

from bench.exec import protocol
from bench.exec.protocol import Driver, Failed, Finish, Measure, Measured, Ready, WorkerResult
from bench.measure import machine
from bench.measure.latency import per_repetition
from bench.metrics import PAIRED, PAIRED_MODEL
from bench.records.rundir import RunDir
from bench.records.schema import CaseSpec, Estimate
from bench.run.handle import Budget, WorkerGone, WorkerProcess
from bench.run.interleave import Schedule
from bench.run.latency_record import MAX_METRICS, MeasuredCase, build_record, combined_metrics, partners, rounds_of
from bench.suite import load_suite
from tests.conftest import KNOWN_ANSWER, write_suite

QUIET = machine.Reading(other_cpus=0.0, cpu_mhz=None, gpu_clock_mhz=None, gpu_utilization=None)
MS = 1_000_000


def _cases(tmp_path: Path, backends: str, repetitions: str, models: str = "[synthetic]", extra: str = "",
           new_tokens: int = 4) -> list[CaseSpec]:
    (tmp_path / "eval.txt").write_text("text for the known-answer backend " * 20)
    lines = ["name: parts", f"models: {models}", f"backends: {backends}",
             f"workloads: [{{batch_size: 1, prompt_tokens: 8, new_tokens: {new_tokens}}}]", "tasks: [latency]",
             f"repetitions: {repetitions}", f"perplexity: {{text: {tmp_path / 'eval.txt'}}}", extra]
    _, cases = load_suite(write_suite(tmp_path / "suite.yaml", "\n".join(lines) + "\n"))
    return cases


def _stamps(ttft_ms: float, tpot_ms: float, tokens: int = 4) -> list[int]:
    """One generation's per-token stamps (ns) with exactly this TTFT and TPOT."""
    return [round((ttft_ms + i * tpot_ms) * MS) for i in range(tokens)]


# ---------------------------------------------------------------- the messages


def test_every_message_goes_through_its_line_and_back_and_a_wrong_one_is_refused():
    failed = WorkerResult(status="failed", reason="RuntimeError: boom")
    for command in (Measure(repetitions=3), Finish(profile=True)):
        assert protocol.decode_command(protocol.encode(command)) == command
    for reply in (Ready(), Measured(stamps=[[1, 2], [3, 4]], seconds=0.5), Failed(result=failed)):
        assert protocol.decode_reply(protocol.encode(reply)) == reply
    line = protocol.encode(Measure(repetitions=2))
    assert line.endswith("\n") and line.count("\n") == 1  # one line per message
    with pytest.raises(ValidationError):
        protocol.decode_command(protocol.encode(Ready()))  # a reply is no command
    with pytest.raises(ValidationError):
        protocol.decode_reply('{"kind": "measured", "stamps": [[1]]}')  # seconds missing
    with pytest.raises(ValidationError):
        Measure(repetitions=0)


def test_the_workers_end_reads_commands_until_finish_and_answers_on_its_pipe():
    commands_r, commands_w = os.pipe()
    replies_r, replies_w = os.pipe()
    with os.fdopen(commands_w, "w") as commands:
        for command in (Measure(repetitions=2), Measure(repetitions=1), Finish(profile=True)):
            commands.write(protocol.encode(command))
    driver = Driver(commands_r, replies_w)
    assert [c.repetitions for c in driver.measure_commands()] == [2, 1]
    assert driver.profile is True
    driver.send(Measured(stamps=[[5]], seconds=0.25))
    driver.replies.close()
    with os.fdopen(replies_r) as replies:
        assert protocol.decode_reply(replies.readline()) == Measured(stamps=[[5]], seconds=0.25)


# ---------------------------------------------------------------- the handle, on real known-answer workers


def _run(tmp_path: Path) -> RunDir:
    run = RunDir(tmp_path / "results", "r")
    (run.path / "logs").mkdir(parents=True)
    return run


def _start(case: CaseSpec, run: RunDir, budget: Budget) -> WorkerProcess:
    with run.open_log(run.log_path(case.id), "ab") as log:
        return WorkerProcess.start(case, run, run.path / "tmp" / f"{case.id}.json", log, budget, driven=True)


def test_the_handle_paces_a_real_worker_and_reads_its_result(tmp_path):
    (case,) = _cases(tmp_path, f'[{{backend: "{KNOWN_ANSWER}", options: {{token_delay_s: 0.002}}}}]',
                     "{warmup: 0, min: 3, max: 3}")
    run = _run(tmp_path)
    budget = Budget(120)
    worker = _start(case, run, budget)
    worker.receive(Ready)
    worker.send(Measure(repetitions=3))
    reply = worker.receive(Measured)
    assert len(reply.stamps) == 3 and all(len(s) == 4 for s in reply.stamps)
    assert min(per_repetition(reply.stamps)["tpot_ms"]) >= 2.0  # 2 ms injected per token, never less
    worker.send(Finish(profile=False))
    result = worker.finish("finishing")
    assert result.status == "ok" and result.metrics["load_s"] >= 0 and worker.proc.returncode == 0
    assert 0 < budget.used_s < 120
    worker.result_file.write_text("{not json")  # read again: a malformed file is a failed result, never a crash
    malformed = worker.result()
    assert malformed is not None and malformed.status == "failed"
    assert malformed.reason.startswith("the worker's result file is malformed")


@pytest.mark.parametrize("fail, budget_s, reason, exit_code", [
    ("hang", 1.5, "timeout: still running after 1.5 s without answering; killed", -9),  # killed, by its budget
    ("raise", 120, "RuntimeError: injected failure", 0),  # it said so, wrote its result and exited
])
def test_a_worker_that_cannot_answer_is_gone_with_its_reason(tmp_path, fail, budget_s, reason, exit_code):
    (case,) = _cases(tmp_path, f'[{{backend: "{KNOWN_ANSWER}", options: {{fail: {fail}}}}}]',
                     "{warmup: 0, min: 3, max: 3}")
    worker = _start(case, _run(tmp_path), Budget(budget_s))
    with pytest.raises(WorkerGone) as gone:
        worker.receive(Ready)
    assert gone.value.result.status == "failed" and gone.value.result.reason == reason
    assert worker.proc.returncode == exit_code  # dead and reaped
    assert Budget(10, used_s=4).timeout("finishing", 6) == (  # the message once a case used up its timeout_s
        "timeout: still finishing when the case had used its timeout_s (10 s, counted over every process set); "
        "killed")


# ---------------------------------------------------------------- the schedule, with scripted workers


class ScriptedWorker:
    """A worker whose answers are known: each generation of case `case` takes its model's TTFT and TPOT (ms); it
    logs every start, ready, measure and finish in `events`; a case in `fail_after` dies at its measure after that
    many."""

    def __init__(self, case: CaseSpec, process: int, events: list, alive: set, tpot_ms: dict[str, float],
                 fail_after: dict[str, int]) -> None:
        self.case, self.process, self.events, self.alive = case, process, events, alive
        self.tpot_ms, self.fail_after = tpot_ms, fail_after
        self.pending: Measure | Finish | None = None
        self.profile: bool | None = None
        alive.add(case.id)
        events.append(("start", case.id, process))

    @property
    def pid(self) -> int:
        return os.getpid()

    def send(self, command):
        self.pending = command

    def receive(self, expected):
        if expected is Ready:
            self.events.append(("ready", self.case.id, self.process))
            return Ready()
        assert isinstance(self.pending, Measure)
        self.events.append(("measure", self.case.id, self.process))
        self.fail_after[self.case.id] = self.fail_after.get(self.case.id, -1) - 1  # counts down to -1, then dies
        if self.fail_after[self.case.id] == -1:
            self.kill()
            raise WorkerGone(WorkerResult(status="failed", reason="worker killed by SIGKILL"))
        tpot = self.tpot_ms[self.case.variant]  # 0 %, +10 %, +20 %, ...: never precise enough to stop early
        jitter = [1 + 0.1 * ((len(self.events) + k) % 3) for k in range(self.pending.repetitions)]
        return Measured(stamps=[_stamps(10, tpot * j) for j in jitter], seconds=0.01)

    def finish(self, step="running"):
        assert isinstance(self.pending, Finish)
        self.profile = self.pending.profile
        self.events.append(("finish", self.case.id, self.process, self.profile))
        self.alive.discard(self.case.id)
        return WorkerResult(status="ok", metrics={"load_s": 0.1 * (self.process + 1)})

    def kill(self):
        self.alive.discard(self.case.id)


def _scripted(cases, tpot_ms, fail_after=None, seed=0):
    events: list = []
    alive: set = set()
    most: list[int] = [0]

    def start(case, run, process, budget):
        worker = ScriptedWorker(case, process, events, alive, tpot_ms, fail_after if fail_after is not None else {})
        most[0] = max(most[0], len(alive))
        return worker

    schedule = Schedule(cases, RunDir("/nonexistent", "r"), start=start, rng=random.Random(seed))
    return schedule, events, most


THREE = (f'[{{backend: "{KNOWN_ANSWER}", label: a}}, {{backend: "{KNOWN_ANSWER}", label: b}}, '
         f'{{backend: "{KNOWN_ANSWER}", label: c}}]')


def test_resident_sets_measure_every_variant_once_a_round_in_shuffled_orders_and_the_last_set_profiles(tmp_path):
    # min = max = 8 over 2 sets of 2 per round: each set 2 rounds of every variant (4 repetitions per set)
    cases = _cases(tmp_path, THREE, "{warmup: 0, min: 8, max: 8, processes: 2, round_repetitions: 2, "
                   "ci_target: 0.000001}")
    schedule, events, most = _scripted(cases, {"a": 1.0, "b": 2.0, "c": 3.0})
    measured = schedule.measure()
    ids = [c.id for c in cases]
    measures = [(e[1], e[2]) for e in events if e[0] == "measure"]
    assert len(measures) == 3 * 2 * 2  # 3 variants, 2 rounds, 2 sets
    rounds = [measures[i:i + 3] for i in range(0, len(measures), 3)]
    assert all(sorted(case_id for case_id, _ in r) == sorted(ids) for r in rounds)  # each variant once a round
    assert len({tuple(case_id for case_id, _ in r) for r in rounds}) > 1  # the order is shuffled
    assert [p for r in rounds for _, p in r] == [0] * 6 + [1] * 6
    # the first set loads one at a time (start, ready, start, ready, ...); later sets start all, then wait
    first = [e[0] for e in events if e[0] in ("start", "ready") and e[2] == 0]
    later = [e[0] for e in events if e[0] in ("start", "ready") and e[2] == 1]
    assert first == ["start", "ready"] * 3 and later == ["start"] * 3 + ["ready"] * 3
    assert most[0] == 3  # resident side by side
    assert {(e[1], e[2], e[3]) for e in events if e[0] == "finish"} == {(i, p, p == 1) for i in ids for p in (0, 1)}
    for m in measured.values():
        assert m.process == [0] * 4 + [1] * 4 and m.round == [0, 0, 1, 1, 0, 0, 1, 1] and m.rounds == 4
        assert m.stop_reason() == "max_repetitions" and len(m.results) == 2


def test_processes_mode_never_holds_two_variants_at_once_and_a_failed_variant_stops_alone(tmp_path):
    cases = _cases(tmp_path, THREE, "{warmup: 0, min: 4, max: 4, processes: 2, round_repetitions: 2, "
                   "ci_target: 0.000001, interleave: processes}")
    by_variant = {c.variant: c.id for c in cases}
    schedule, events, most = _scripted(cases, {"a": 1.0, "b": 2.0, "c": 3.0}, fail_after={by_variant["b"]: 1})
    measured = schedule.measure()
    assert most[0] == 1
    assert measured[by_variant["b"]].gone is not None and measured[by_variant["b"]].gone.reason.startswith("worker")
    assert [e[0] for e in events if e[1] == by_variant["b"]] == [
        "start", "ready", "measure", "finish", "start", "ready", "measure"]  # nothing started after its failure
    for variant in ("a", "c"):
        m = measured[by_variant[variant]]
        assert m.gone is None and len(m.stamps) == 4 and len(m.results) == 2  # one process per round
        assert m.process == [0, 0, 1, 1]


# ---------------------------------------------------------------- the record, from hand-made rounds


def _measured(case: CaseSpec, rounds: dict[tuple[int, int], list[float]], results: list[WorkerResult]) -> MeasuredCase:
    """`case` measured in these (process, round)s, each repetition with this TPOT (ms) and TTFT 10 ms."""
    m = MeasuredCase(case, results=results)
    for (process, round_index), tpots in rounds.items():
        m.add([_stamps(10, t) for t in tpots], 0.1, process, round_index, QUIET)
    return m


def _ok(**metrics) -> WorkerResult:
    return WorkerResult(status="ok", metrics=metrics)


def test_paired_ratios_come_from_the_rounds_both_measured_known_answer(tmp_path):
    cases = _cases(tmp_path, f'[{{backend: "{KNOWN_ANSWER}", label: ref}}, {{backend: "{KNOWN_ANSWER}", label: v}}]',
                   "{warmup: 0, min: 4, max: 8, processes: 2, ci_level: 0.9}", extra="reference: ref")
    ref, v = (next(c for c in cases if c.variant == label) for label in ("ref", "v"))
    # drift doubles the times in process 1; within each round v takes 1.5x, 2x or 3x the reference's TPOT
    reference_rounds = {(0, 0): [2, 2], (0, 1): [2, 2], (1, 0): [4, 4], (1, 1): [4, 4], (1, 2): [4, 4]}
    variant_rounds = {(0, 0): [3, 3], (0, 1): [4, 4], (1, 0): [12, 12], (1, 1): [8, 8], (1, 3): [9, 9]}
    group = {ref.id: _measured(ref, reference_rounds, [_ok(), _ok()]),
             v.id: _measured(v, variant_rounds, [_ok(), _ok()])}
    assert rounds_of(group[v.id], "tpot_ms")[(1, 0)] == [12.0, 12.0]
    assert [p.names for p in partners(group[v.id], group)] == [PAIRED]
    assert partners(group[ref.id], group) == []  # never paired with itself
    record, samples = build_record(group[v.id], group, "resident", None)
    ratio = record.metrics["tpot_vs_reference"]
    assert isinstance(ratio, Estimate)
    assert ratio.value == pytest.approx(2.0)  # median of 1.5, 2, 3, 2 (rounds (1, 2) and (1, 3) unpaired)
    assert ratio.method.startswith("median over 4 paired rounds") and ratio.ci_level == 0.9
    assert record.metrics["ttft_vs_reference"].value == pytest.approx(1.0)
    assert "tpot_vs_reference" not in build_record(group[ref.id], group, "resident", None)[0].metrics
    assert samples is not None and samples.round == [0, 0, 1, 1, 0, 0, 1, 1, 3, 3]
    assert record.latency.interleave == "resident" and record.latency.processes == 2 and record.latency.rounds == 5


def test_models_in_one_unit_get_the_ratio_to_the_same_variant_on_the_reference_model(tmp_path):
    cases = _cases(tmp_path, f'[{{backend: "{KNOWN_ANSWER}", label: ref}}, {{backend: "{KNOWN_ANSWER}", label: v}}]',
                   "{warmup: 0, min: 2, max: 4}", models="[a, b]", extra="reference: ref\ninterleave: models")
    at = {(c.model, c.variant): c for c in cases}
    times = {("a", "ref"): 2, ("a", "v"): 3, ("b", "ref"): 4, ("b", "v"): 9}
    group = {c.id: _measured(c, {(0, r): [times[key]] * 2 for r in range(3)}, [_ok()]) for key, c in at.items()}
    record, _ = build_record(group[at["b", "v"].id], group, "resident", None)
    assert record.metrics["tpot_vs_reference"].value == pytest.approx(9 / 4)  # b's v to b's ref
    assert record.metrics["tpot_vs_reference_model"].value == pytest.approx(3.0)  # b's v to a's v
    assert [p.names for p in partners(group[at["b", "ref"].id], group)] == [PAIRED_MODEL]
    group[at["a", "v"].id].gone = WorkerResult(status="failed", reason="x")  # a partner that failed pairs with none
    assert "tpot_vs_reference_model" not in build_record(group[at["b", "v"].id], group, "resident", None)[0].metrics


@pytest.mark.parametrize("mode", ["resident", "processes"])
def test_the_processes_values_combine_peaks_as_max_loads_alone_and_the_rest_from_the_last(tmp_path, mode):
    (case,) = _cases(tmp_path, f'[{{backend: "{KNOWN_ANSWER}"}}]',
                     f"{{warmup: 0, min: 2, max: 4, processes: 3, interleave: {mode}}}")
    peaks = [{name: 100 * (i + 1) for name in MAX_METRICS} for i in range(3)]
    peaks[1]["vm_hwm_bytes"] = 1000  # the largest in the middle process: still the one kept
    results = [_ok(**peaks[i], load_s=[1.0, 5.0, 6.0][i], baseline_rss_bytes=[10, 20, 30][i],
                   kv_cache_bytes_per_token=[7, 8, 9][i]) for i in range(3)]
    m = _measured(case, {(p, 0): [2, 2] for p in range(3)}, results)
    metrics = combined_metrics(m, {})
    assert {name: metrics[name] for name in MAX_METRICS} == {**{name: 300 for name in MAX_METRICS},
                                                              "vm_hwm_bytes": 1000}
    assert metrics["load_s"] == (1.0 if mode == "resident" else 5.0)  # resident: only the first set loads alone
    assert metrics["baseline_rss_bytes"] == 10 and metrics["kv_cache_bytes_per_token"] == 9


def test_a_wide_interval_is_said_at_the_configured_level_and_a_gone_case_is_a_failed_record(tmp_path):
    (case,) = _cases(tmp_path, f'[{{backend: "{KNOWN_ANSWER}"}}]',
                     "{warmup: 0, min: 2, max: 6, ci_level: 0.8, ci_target: 0.0001}")
    m = _measured(case, {(0, r): [2 + r, 3 * r + 1] for r in range(3)}, [_ok()])
    record, _ = build_record(m, {case.id: m}, "resident", None)
    assert record.latency.stop_reason == "max_repetitions"
    assert any(w.startswith("the 80 % CI of the median (") for w in record.latency.warnings)
    assert not any("95 %" in w for w in record.latency.warnings)
    m.gone = WorkerResult(status="failed", reason="timeout: still running after 3 s without answering; killed")
    log = tmp_path / "case.log"
    log.write_text("line 1\nlast words\n")
    gone, samples = build_record(m, {case.id: m}, "resident", log)
    assert gone.status == "failed" and gone.reason == m.gone.reason and samples is None
    assert gone.output_tail == "line 1\nlast words"
    empty = MeasuredCase(case)
    assert build_record(empty, {case.id: empty}, "resident", None)[0].reason == "no repetition was measured"
