"""A hostile corpus of runs (issue 19): symbolic links planted in a run or a shard, damaged and half-made run
directories, a run still being written, harness I/O errors, SIGTERM, a gate fed too little data, and a fuzz
test of the run loader. Every command answers exit 2 naming the file (or a loaded run), never a traceback
(exit 70), never a write outside results/ and reports/.

One real run of a known-answer suite (one repetition per variant, one process) is made once; each test damages
a copy. Commands run in-process (`bench.cli.main`) unless a signal or a worker is part of the test.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.cli import main
from bench.errors import BadInput
from bench.records import safe_files
from bench.records.rundir import RunDir, load_run
from tests.conftest import KNOWN_ANSWER, ROOT, record_lines, run_bench, write_suite

SUITE = f"""
name: hostile
models: [synthetic]
backends:
  - {{backend: "{KNOWN_ANSWER}", label: a, options: {{token_delay_s: 0.001}}}}
  - {{backend: "{KNOWN_ANSWER}", label: b, options: {{token_delay_s: 0.001}}}}
reference: a
workloads: [{{batch_size: 1, prompt_tokens: 8, new_tokens: 4}}]
tasks: [latency]
repetitions: {{warmup: 0, min: 1, max: 1, processes: 1}}
timeout_s: 60
"""

HANG = f"""
name: hang
models: [synthetic]
backends:
  - {{backend: "{KNOWN_ANSWER}", label: hangs, options: {{fail: hang, fail_marker: fixed}}}}
workloads: [{{batch_size: 1, prompt_tokens: 4, new_tokens: 3}}]
tasks: [latency]
repetitions: {{warmup: 0, min: 2, max: 2, processes: 1}}
timeout_s: 120
"""


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    """One finished run, `one`, of SUITE (real CLI, worker processes and all)."""
    root = tmp_path_factory.mktemp("hostile")
    write_suite(root / "s.yaml", SUITE)
    run_bench("run", "s.yaml", "--run-id", "one", cwd=root, timeout=300)
    return root


@pytest.fixture
def work(made, tmp_path, monkeypatch) -> Path:
    """A fresh copy of the run in results/one under a working directory of its own (the test's cwd)."""
    shutil.copytree(made / "results" / "one", tmp_path / "results" / "one", symlinks=True)
    shutil.copy(made / "s.yaml", tmp_path / "s.yaml")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("do not touch\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def bench(capsys, *args: str) -> tuple[int, str]:
    """`python -m bench ARGS` in this process: (exit code, stderr)."""
    code = main(list(args))
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, err


def secret_untouched(work: Path) -> None:
    assert (work / "outside" / "secret.txt").read_text() == "do not touch\n"
    assert sorted(p.name for p in (work / "outside").iterdir()) == ["secret.txt"]


# ------------------------------------------------------------------ symbolic links


def test_a_lock_file_that_is_a_link_is_not_written_through(work, capsys):
    lock = work / "results" / "one" / ".lock"
    lock.unlink(missing_ok=True)
    lock.symlink_to(work / "outside" / "secret.txt")
    code, err = bench(capsys, "run", "--resume", "one")
    assert code == 2 and "results/one/.lock is a symbolic link" in err and "secret.txt" in err
    secret_untouched(work)


def test_records_that_are_a_link_out_of_the_run_are_neither_read_nor_appended_to(work, capsys):
    cases = work / "results" / "one" / "cases.jsonl"
    shutil.move(cases, work / "outside" / "cases.jsonl")
    cases.symlink_to(work / "outside" / "cases.jsonl")
    before = (work / "outside" / "cases.jsonl").read_bytes()
    for args in (["run", "--resume", "one"], ["report", "one", "--no-html"], ["compare", "one", "one"]):
        code, err = bench(capsys, *args)
        assert code == 2 and "cases.jsonl is a symbolic link" in err and "leaves the run directory" in err, args
    assert (work / "outside" / "cases.jsonl").read_bytes() == before


def test_no_writer_of_a_run_follows_a_link_even_one_that_stays_inside(work):
    run = RunDir(work / "results", "one")
    record = record_lines(run.path)[0]
    samples = run.samples(record.id)
    assert samples is not None
    (run.path / "samples").rename(run.path / "real-samples")
    (run.path / "samples").symlink_to(work / "outside")  # a directory link
    with pytest.raises(safe_files.UnsafePath, match="samples is a symbolic link"):
        run.write_samples(record.id, samples)
    shutil.copy(run.cases_path, run.path / "copy.jsonl")
    run.cases_path.unlink()
    run.cases_path.symlink_to("copy.jsonl")  # inside the run: readable, but never appended to
    assert load_run(run.path).records
    with pytest.raises(safe_files.UnsafePath, match="cases.jsonl is a symbolic link"):
        run.append(record)
    (run.path / "logs" / f"{record.id}.log").unlink()
    (run.path / "logs" / f"{record.id}.log").symlink_to(work / "outside" / "secret.txt")
    with pytest.raises(safe_files.UnsafePath, match=r"\.log is a symbolic link"):
        run.open_log(run.log_path(record.id))
    secret_untouched(work)


def test_a_report_directory_that_is_a_link_is_not_written_through(work, capsys):
    (work / "reports").mkdir()
    (work / "reports" / "one").symlink_to(work / "outside")
    code, err = bench(capsys, "report", "one", "--no-html")
    assert code == 2 and "reports/one is a symbolic link" in err
    secret_untouched(work)


def test_report_of_a_dotdot_path_writes_under_reports_only(work, capsys):
    code, _ = bench(capsys, "report", "results/one/logs/..", "--no-html")
    assert code == 0 and (work / "reports" / "one" / "report.md").is_file()
    assert not (work / "report.md").exists() and not (work / "results" / "report.md").exists()


def _shards(work: Path) -> tuple[Path, Path]:
    """The run cut in two runs of the same suite, one record each (what two shards are)."""
    one = work / "results" / "one"
    lines = (one / "cases.jsonl").read_text().splitlines()
    shards = []
    for i, name in enumerate(("s1", "s2")):
        shard = work / "results" / name
        shutil.copytree(one, shard)
        (shard / "cases.jsonl").write_text(lines[i] + "\n")
        meta = json.loads((shard / "run.json").read_text())
        (shard / "run.json").write_text(json.dumps({**meta, "run_id": name}))
        shards.append(shard)
    return shards[0], shards[1]


def _nothing_merged(work: Path) -> None:
    assert sorted(p.name for p in (work / "results").iterdir()) == ["one", "s1", "s2"]  # no half-made run left


def test_merge_refuses_a_shard_with_a_link_out_of_it_and_leaves_nothing(work, capsys):
    _, s2 = _shards(work)
    sample = next((s2 / "samples").iterdir())
    sample.unlink()
    sample.symlink_to(work / "outside" / "secret.txt")
    code, err = bench(capsys, "merge", "s1", "s2", "--run-id", "all")
    assert code == 2 and f"{sample.name} is a symbolic link" in err and "leaves the run directory" in err
    _nothing_merged(work)
    secret_untouched(work)


def test_merge_refuses_a_garbage_line_atomically_and_merges_once_repaired(work, capsys):
    _, s2 = _shards(work)
    good = (s2 / "cases.jsonl").read_text()
    (s2 / "cases.jsonl").write_text(good + '{"id": "x", "status": \n')  # a line cut short, then more lines
    (s2 / "cases.jsonl").write_text(good + '{"id": "x", "status": \n' + good)
    code, err = bench(capsys, "merge", "s1", "s2", "--run-id", "all")
    assert code == 2 and "s2/cases.jsonl:2: not a whole record" in err, err
    _nothing_merged(work)
    (s2 / "cases.jsonl").write_text(good)
    code, _ = bench(capsys, "merge", "s1", "s2", "--run-id", "all")
    merged = load_run(work / "results" / "all")
    assert code == 0 and len(merged.records) == 2 and merged.meta.merged_from == ["s1", "s2"]
    assert all(merged.samples(r.id) is not None for r in merged.records)
    assert not [p for p in (work / "results").iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------------ damaged and half-made runs


def _first_sample(run: Path) -> Path:
    return min((run / "samples").iterdir())


def _set_meta(run: Path, **fields) -> None:
    meta = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**meta, **fields}))


def _cases_a_directory(run: Path) -> None:
    (run / "cases.jsonl").unlink()
    (run / "cases.jsonl").mkdir()


DAMAGES = {  # what is done to results/one, and what the message must say
    "run.json not UTF-8": (lambda run: (run / "run.json").write_bytes(b'{"format_version": \xff\xfe}'),
                           "run.json: not UTF-8"),
    "run.json a list": (lambda run: (run / "run.json").write_text("[1, 2]"), "run.json: run metadata must be"),
    "run.json not JSON": (lambda run: (run / "run.json").write_text('{"run_id": '), "run.json: not run metadata"),
    "format_version a string": (lambda run: _set_meta(run, format_version="2"), "format_version must be a positive"),
    "format_version a float": (lambda run: _set_meta(run, format_version=2.5), "format_version must be a positive"),
    "case_ids not a list": (lambda run: _set_meta(run, case_ids=5), "run.json: does not match format"),
    "cases.jsonl a directory": (_cases_a_directory, "cases.jsonl: is a directory"),
    "a record that is a list": (lambda run: (run / "cases.jsonl").write_text("[1, 2]\n"),
                                "cases.jsonl: record 1 is not a JSON object"),
    "run.json missing": (lambda run: (run / "run.json").unlink(), "has no run.json"),
}
COMMANDS = [["report", "one", "--no-html"], ["compare", "one", "one"], ["history", "record", "one", "--db", "h.db"],
            ["run", "--resume", "one"], ["export", "one", "--format", "csv"], ["merge", "one", "--run-id", "m"]]


@pytest.mark.parametrize("damage", DAMAGES, ids=list(DAMAGES))
def test_a_damaged_run_is_exit_2_naming_the_file_from_every_command(work, capsys, damage):
    mutate, says = DAMAGES[damage]
    mutate(work / "results" / "one")
    for args in COMMANDS:
        code, err = bench(capsys, *args)
        assert code == 2 and says in err and "results/one" in err, (args, err)


@pytest.mark.parametrize("damage", ["truncated", "wrong type"])
def test_corrupt_raw_samples_are_exit_2_naming_the_file(work, capsys, damage):
    sample = _first_sample(work / "results" / "one")
    sample.write_text(sample.read_text()[:40] if damage == "truncated" else '{"ttft_ms": "fast"}')
    code, err = bench(capsys, "compare", "one", "one")
    assert code == 2 and f"samples/{sample.name}" in err, err


def test_a_half_made_run_directory_names_the_command_that_removes_it(work, capsys):
    (work / "results" / "half").mkdir()  # killed before run.json was written, or a failed merge
    for args in (["run", "s.yaml", "--run-id", "half"], ["run", "--resume", "half"], ["report", "half"],
                 ["merge", "one", "--run-id", "half"]):
        code, err = bench(capsys, *args)
        assert code == 2 and "results/half has no run.json" in err and "rm -r results/half" in err, args
    # killed between run.json and suite.yaml (runs made before suite.yaml was written first)
    run = work / "results" / "one"
    (run / "suite.yaml").unlink()
    (run / "cases.jsonl").unlink()
    code, err = bench(capsys, "run", "--resume", "one")
    assert code == 2 and "suite.yaml is missing" in err and "rm -r results/one" in err
    (run / "suite.yaml").mkdir()  # a suite.yaml that is no file, with records
    (run / "cases.jsonl").write_text("")
    code, err = bench(capsys, "run", "--resume", "one")
    assert code == 2 and "results/one/suite.yaml" in err, err


def test_history_record_refuses_a_run_still_being_written(work, capsys):
    with RunDir(work / "results", "one").writer():
        code, err = bench(capsys, "history", "record", "one", "--db", "h.db")
    assert code == 2 and "still being written" in err and f"pid {os.getpid()}" in err
    assert not (work / "h.db").exists() or "one" not in (work / "h.db").read_bytes().decode(errors="replace")
    code, _ = bench(capsys, "history", "record", "one", "--db", "h.db")
    assert code == 0


def test_a_harness_io_error_stops_the_run_with_exit_2_and_is_not_a_failed_case(work, capsys):
    run = work / "results" / "one"
    lines = (run / "cases.jsonl").read_text().splitlines()
    (run / "cases.jsonl").write_text(lines[0] + "\n")  # one case left to run
    shutil.rmtree(run / "logs")
    (run / "logs").write_text("")  # logs/ cannot be made: the harness cannot write the case's log
    code, err = bench(capsys, "run", "--resume", "one")
    assert code == 2 and "results/one/logs" in err and "--resume one" in err, err
    assert (run / "cases.jsonl").read_text() == lines[0] + "\n"  # no failed record for the harness's fault


def test_sigterm_stops_a_run_with_143_and_the_resume_hint(tmp_path):
    write_suite(tmp_path / "hang.yaml", HANG)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    runner = subprocess.Popen([sys.executable, "-m", "bench", "run", "hang.yaml", "--run-id", "t"], cwd=tmp_path,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list((tmp_path / "results" / "t" / "logs").glob("*.log")) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # the worker is hanging inside the case
    runner.send_signal(signal.SIGTERM)
    _, err = runner.communicate(timeout=60)
    assert runner.returncode == 143, err
    assert "terminated: finished cases are kept" in err and "python -m bench run --resume t" in err


# ------------------------------------------------------------------ the gate and too little data


def test_an_a_a_compare_of_one_repetition_runs_is_inconclusive_with_the_reason_in_markdown(work, capsys):
    """The issue's case: two one-repetition runs 15.6 % apart gave exit 1 with a zero-width interval."""
    from bench.measure.latency import derive

    shutil.copytree(work / "results" / "one", work / "results" / "two")
    records = record_lines(work / "results" / "two")
    for r in records:
        path = work / "results" / "two" / "samples" / f"{r.id}.json"
        stamps = [[int(s * 1.156) for s in rep] for rep in json.loads(path.read_text())["stamps_ns"]]
        samples, metrics = derive(stamps, r.workload.batch_size, r.workload.prompt_tokens)
        path.write_text(samples.model_dump_json())
        r.metrics.update(metrics)
    (work / "results" / "two" / "cases.jsonl").write_text("".join(r.model_dump_json() + "\n" for r in records))
    code, _ = bench(capsys, "compare", "one", "two", "--markdown", "alert.md", "--json", "c.json")
    result = json.loads((work / "c.json").read_text())
    timings = [c for c in result["comparisons"] if c["metric"] in ("ttft_ms", "tpot_ms")]
    assert code == 4 and timings and all(c["status"] == "inconclusive" for c in timings)
    assert all(c["ratio"] == pytest.approx(1.156, rel=0.01) for c in timings if c["metric"] == "tpot_ms")
    markdown = (work / "alert.md").read_text()
    assert "too little data for a verdict (baseline has 1 repetition(s) in a process" in markdown
    assert "at least 5 repetitions per process and 2 processes" in markdown
    code, _ = bench(capsys, "compare", "one", "--json", "w.json")  # within the run: one paired round
    within = json.loads((work / "w.json").read_text())
    assert code != 1 and all(c["status"] != "regression" for c in within["comparisons"])


def test_the_minimum_is_per_process_and_a_noise_estimate_stands_in_for_processes():
    import numpy as np

    from bench.gate.rule import Units, shortfall

    def units(per_process: list[int], requests: bool = False) -> Units:
        groups = np.repeat(np.arange(len(per_process)), per_process)
        return Units(np.ones((len(groups), 1)), lambda u: u.mean(), groups, requests=requests)

    assert shortfall(units([5, 5]), units([6, 5]), widened=False) == ""
    assert "current has 4 repetition(s)" in shortfall(units([5, 5]), units([20, 4]), widened=True)
    assert "baseline was measured in 1 process(es)" in shortfall(units([30]), units([5, 5]), widened=False)
    assert shortfall(units([30]), units([30]), widened=True) == ""  # the history's noise widened the interval
    assert shortfall(units([12], requests=True), units([5], requests=True), widened=False) == ""
    assert "has 4 request(s)" in shortfall(units([12], requests=True), units([4], requests=True), widened=False)


# ------------------------------------------------------------------ fuzz: the loader over mutated files

JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                      max_size=3), max_leaves=6)


def _paths(value, prefix=()):
    """Every key path of a JSON document (dicts and lists), the document itself first."""
    yield prefix
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        yield from _paths(child, (*prefix, key))


def _replace(document, path, value):
    if not path:
        return value
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return document


@st.composite
def mutations(draw):
    """(file to damage, how): a JSON value replaced anywhere in it, bytes cut off, or bytes overwritten."""
    target = draw(st.sampled_from(["run.json", "cases.jsonl", "sample"]))
    how = draw(st.sampled_from(["replace", "truncate", "overwrite"]))
    return target, how, draw(st.integers(0, 10**6)), draw(JSON_VALUES), draw(st.binary(min_size=1, max_size=8))


def _mutate(run: Path, target: str, how: str, where: int, value, data: bytes) -> None:
    path = _first_sample(run) if target == "sample" else run / target
    raw = path.read_bytes()
    if how == "truncate":
        path.write_bytes(raw[: where % (len(raw) + 1)])
    elif how == "overwrite":
        at = where % (len(raw) + 1)
        path.write_bytes(raw[:at] + data + raw[at + len(data):])
    elif target == "cases.jsonl":
        lines = raw.decode().splitlines()
        line = where % len(lines)
        document = json.loads(lines[line])
        paths = list(_paths(document))
        lines[line] = json.dumps(_replace(document, paths[where % len(paths)], value))
        path.write_text("\n".join(lines) + "\n")
    else:
        document = json.loads(raw)
        paths = list(_paths(document))
        path.write_text(json.dumps(_replace(document, paths[where % len(paths)], value)))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutation=mutations())
def test_fuzz_the_loader_gives_a_run_or_bad_input_never_a_crash(made, tmp_path_factory, mutation):
    from bench.report.markdown import render

    run = tmp_path_factory.mktemp("fuzz") / "one"
    shutil.copytree(made / "results" / "one", run)
    _mutate(run, *mutation)
    try:
        loaded = load_run(run)
        for record in loaded.records:
            loaded.samples(record.id)
        render(loaded, "../results/one")
    except BadInput:
        pass  # exit 2 with a message: fine; anything else is a crash (exit 70) and fails the test


# ------------------------------------------------------------------ serving inputs

CHUNK = 'data: {"choices": [{"text": "ab", "finish_reason": null}]}\n\n'
LAST = 'data: {"choices": [{"text": "ab", "finish_reason": %s}]%s}\n\ndata: [DONE]\n\n'
ANSWERS = [  # (the stream a request gets, what the client must make of it)
    (CHUNK * 31 + LAST % ('"length"', ""), "ok: 32 tokens from finish_reason length"),
    (CHUNK * 31 + LAST % ('"length"', ', "usage": "lots"'), "malformed usage"),
    ('data: {"choices": {"text": "ab"}}\n\n', "malformed choices"),
    ('data: {"choices": [{"text": 5}]}\n\n', "malformed text"),
    (CHUNK * 31 + LAST % ('"stop"', ', "usage": {"prompt_tokens": 1, "completion_tokens": 32}'), "ok: usage"),
    (CHUNK * 31 + LAST % ('"stop"', ', "usage": {"completion_tokens": "32"}'), "malformed count"),
    ('data: {"choices": [{"delta": "ab"}]}\n\n', "malformed delta"),
]


def test_malformed_server_answers_are_counted_and_the_servers_token_count_is_used():
    """A real HTTP server on 127.0.0.1 streams 32 chunks of 'ab' (which this test's tokenizer counts as 16 tokens),
    with mistyped fields in some answers: those are `malformed`, the others kept with the server's count."""
    pytest.importorskip("aiohttp", reason="the serving client needs aiohttp: pip install 'bench[serving]'")
    import asyncio

    from aiohttp import web

    from bench.records.schema import SLO
    from bench.serving.results import aggregate
    from bench.serving.traffic.client import Outcome, Target, send, session
    from bench.serving.traffic.prompts import Prompt

    served = iter(ANSWERS)

    async def completions(request):
        answer = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await answer.prepare(request)
        await answer.write(next(served)[0].encode())
        return answer

    async def go():
        app = web.Application()
        app.router.add_post("/v1/completions", completions)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with session(10) as http:
                target = Target(f"http://127.0.0.1:{port}/v1", timeout_s=10)
                return [await send(http, target, "hi", 32, Outcome(index=i, scheduled_ns=0))
                        for i in range(len(ANSWERS))]
        finally:
            await runner.cleanup()

    outcomes = asyncio.run(go())
    assert [o.error_kind for o in outcomes] == [None, "malformed", "malformed", "malformed", None, "malformed",
                                                "malformed"], [o.error for o in outcomes]
    requests = aggregate.samples(outcomes, [Prompt("hi", 1, 32)], 0, lambda text: len(text) // 4)
    metrics, errors = aggregate.level_metrics(requests, SLO(), None)
    assert errors == {"malformed": 5} and metrics["serve_ok_requests"] == 2
    ok = aggregate.ok_requests(requests)
    assert [(r.output_tokens, r.tokens_from, r.retokenized_tokens) for r in ok] == [(32, "length", 16),
                                                                                   (32, "usage", 16)]
    assert metrics["serve_output_tokens"] == 64 and metrics["serve_usage_mismatches"] == 1  # usage 32 vs 16
    note = aggregate.retokenize_disagreements(requests)
    assert note and note.startswith("2 request(s): the server's output token count (length: 32)") and "(16)" in note


def test_a_server_streaming_one_token_per_chunk_is_counted_by_chunks():
    from bench.serving.results import aggregate
    from bench.serving.traffic.client import Outcome

    done = Outcome(index=0, scheduled_ns=0, sent_ns=1, chunks_ns=list(range(10, 42)), end_ns=50, text=["ab"] * 32,
                   finish_reason="stop")
    assert aggregate.output_count(done, 64, 16, chunk_is_token=True) == (32, "chunks")
    assert aggregate.output_count(done, 64, 16, chunk_is_token=False) == (16, "retokenized")


def test_extra_args_is_one_list_and_a_list_of_lists_expands(tmp_path):
    from bench.suite import load_suite

    base = ("name: x\nmodels: [synthetic]\nservers:\n  - {server: stub, options: {extra_args: %s}}\n"
            "tasks: [serving]\nserving: {levels: [{concurrency: 1}]}\n")
    (tmp_path / "one.yaml").write_text(base % '[--cb-num-blocks, "8"]')
    (tmp_path / "two.yaml").write_text(base % '[[--a], [--b, "2"]]')
    _, cases = load_suite(tmp_path / "one.yaml")
    assert [c.options["extra_args"] for c in cases] == [["--cb-num-blocks", "8"]]
    _, cases = load_suite(tmp_path / "two.yaml")
    assert [c.options["extra_args"] for c in cases] == [["--a"], ["--b", "2"]]


def test_a_history_database_that_is_a_link_is_refused(work, capsys):
    (work / "results" / "history.sqlite").symlink_to(work / "outside" / "secret.txt")
    code, err = bench(capsys, "history", "record", "one")
    assert code == 2 and "history.sqlite is a symbolic link" in err
    secret_untouched(work)


# ------------------------------------------------------------------ output paths never destroy a run (issue 28)


def _digests(*roots: Path) -> dict[str, str]:
    """sha256 of every file under the roots (links not followed), by path: what must not change."""
    import hashlib

    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() and not p.is_symlink() else "link"
            for root in roots if root.exists() for p in sorted(root.rglob("*")) if not p.is_dir() or p.is_symlink()}


def _with_reports(work: Path, capsys) -> None:
    code, _ = bench(capsys, "report", "one", "--no-html")
    assert code == 0 and (work / "reports" / "one" / "report.md").is_file()


OUTPUT_COMMANDS = [  # every command that writes where the user says, aimed at a run's own files
    ["export", "one", "--format", "csv", "-o", "results/one/cases.jsonl"],
    ["export", "one", "--format", "csv", "-o", "results/one/cases.jsonl", "--force"],
    ["export", "one", "--format", "pytest-benchmark", "-o", "results/one/run.json", "--force"],
    ["export", "one", "--format", "csv", "-o", "results/one/samples/new.csv"],
    ["export", "one", "--format", "csv", "-o", "reports/one/report.md", "--force"],
    ["export", "one", "--format", "csv", "-o", "results/one/logs/../suite.yaml"],
    ["export", "one", "--format", "csv", "-o", "linked/cases.jsonl"],  # a directory link into the run
    ["export", "one", "--format", "csv", "-o", "records-link.csv"],  # a file link to the run's records
    ["compare", "one", "one", "--json", "results/one/run.json", "--force"],
    ["compare", "one", "one", "--markdown", "results/one/cases.jsonl"],
    ["compare", "one", "one", "--markdown", "results/one/cases.jsonl", "--append"],
    ["compare", "one", "one", "--markdown", "reports/one/report.md", "--force"],
    ["site", "-o", "results/one", "--force"],
    ["site", "-o", "reports/one", "--force"],
    ["site", "-o", "results", "--force"],
    ["site", "-o", ".", "--force"],
    ["history", "record", "one", "--db", "results/one/cases.jsonl"],
    ["history", "record", "one", "--db", "results/one/history.sqlite"],
    ["history", "record", "one", "--results-dir", "results/one/.."],  # fine: results/history.sqlite (below)
    ["merge", "one", "--run-id", "m", "--results-dir", "results/one"],
    ["report", "one", "--no-html", "--reports-dir", "results"],
    ["run", "s.yaml", "--run-id", "inside", "--results-dir", "results/one"],
    ["run", "s.yaml", "--run-id", "two", "--reports-dir", "results"],
]


@pytest.mark.parametrize("args", OUTPUT_COMMANDS, ids=[" ".join(a) for a in OUTPUT_COMMANDS])
def test_no_output_path_can_replace_or_add_a_file_of_a_run(work, capsys, args):
    """Issue 28: `export -o results/RUN/cases.jsonl` replaced the run's records; `compare --json results/B/run.json`
    its metadata. Every output-taking command, aimed at a run's files (directly, through `..`, through a link to
    the file or to the run's directory): exit 2 naming the run, every file of results/ and reports/ unchanged."""
    _with_reports(work, capsys)
    (work / "linked").symlink_to(work / "results" / "one")
    (work / "records-link.csv").symlink_to(work / "results" / "one" / "cases.jsonl")
    before = _digests(work / "results", work / "reports")
    code, err = bench(capsys, *args)
    if "--db" not in args and args[:2] == ["history", "record"]:  # the control: a database beside the runs
        assert code == 0 and (work / "results" / "history.sqlite").is_file(), err
        (work / "results" / "history.sqlite").unlink()
    else:
        assert code == 2, err
        assert any(why in err for why in ("results/one is a run directory", "results/one is a run's folder",
                                          "reports/one is a run's folder", "is the results directory",
                                          "holds the results directory")), err
        assert any(what in err for what in ("goes into a run", "mix with the runs'", "into the run itself")), err
    assert _digests(work / "results", work / "reports") == before
    secret_untouched(work)


def test_an_output_file_bench_did_not_write_is_replaced_only_with_force(work, capsys):
    mine = work / "notes.csv"
    mine.write_text("my own notes\n")
    code, err = bench(capsys, "export", "one", "--format", "csv", "-o", "notes.csv")
    assert code == 2 and "notes.csv: the file exists and is not output of this command" in err and "--force" in err
    assert mine.read_text() == "my own notes\n"
    code, _ = bench(capsys, "export", "one", "--format", "csv", "-o", "notes.csv", "--force")
    assert code == 0 and mine.read_text().startswith("case,variant,model,")
    # its own earlier output (recognised by how it begins) and an empty file are replaced without --force
    for fmt, name in (("csv", "notes.csv"), ("pytest-benchmark", "pb.json"), ("pytest-benchmark", "pb.json")):
        code, err = bench(capsys, "export", "one", "--format", fmt, "-o", name)
        assert code == 0, err
    (work / "empty.json").write_text("")
    code, _ = bench(capsys, "export", "one", "--format", "pytest-benchmark", "-o", "empty.json")
    assert code == 0 and json.loads((work / "empty.json").read_text())["benchmarks"]
    code, err = bench(capsys, "export", "one", "--format", "csv", "-o", "pb.json")  # another format's file
    assert code == 2 and "not output of this command" in err
    (work / "alink.csv").symlink_to(mine)
    code, err = bench(capsys, "export", "one", "--format", "csv", "-o", "alink.csv", "--force")
    assert code == 2 and "alink.csv is a symbolic link" in err


def test_compare_replaces_its_own_files_appends_anywhere_but_a_run_and_never_replaces_another(work, capsys):
    summary = work / "summary.md"
    summary.write_text("# Job summary\n")
    for _ in range(2):  # --append adds, twice, to a file that is not bench's: no --force needed
        code, _ = bench(capsys, "compare", "one", "one", "--markdown", "summary.md", "--append")
        assert code != 2
    text = summary.read_text()
    assert text.startswith("# Job summary\n") and text.count("bench compare one → one") == 2
    code, err = bench(capsys, "compare", "one", "one", "--markdown", "summary.md")
    assert code == 2 and "not output of this command" in err and summary.read_text() == text
    for _ in range(2):  # its own earlier outputs are replaced
        code, _ = bench(capsys, "compare", "one", "one", "--markdown", "alert.md", "--json", "c.json")
        assert code != 2
    assert (work / "alert.md").read_text().count("bench compare") == 1
    (work / "data.json").write_text('{"mine": 1}')
    code, err = bench(capsys, "compare", "one", "one", "--markdown", "new.md", "--json", "data.json")
    assert code == 2 and "data.json" in err and (work / "data.json").read_text() == '{"mine": 1}'
    assert not (work / "new.md").exists()  # refused before anything was compared or written
    code, _ = bench(capsys, "compare", "one", "one", "--json", "data.json", "--force")
    assert code != 2 and json.loads((work / "data.json").read_text())["format_version"]


def test_the_signatures_recognise_what_each_command_writes():
    """Known answer: each writer's real output matches the signature its command replaces it by, and a run's
    metadata (JSON too) matches none."""
    import re

    from bench.cli.gate import JSON_SIGNATURE, MARKDOWN_SIGNATURE
    from bench.gate import alerts
    from bench.gate.compare import compare_runs, rule_from
    from bench.gate.result import write_result
    from bench.report.export import SIGNATURES, render

    fixture = load_run(ROOT / "tests" / "data" / "runs" / "v1-fixture")
    result = compare_runs(fixture, fixture, rule_from(fixture))
    written = {JSON_SIGNATURE: write_result(result), MARKDOWN_SIGNATURE: alerts.markdown(result),
               **{SIGNATURES[fmt]: render(fixture, fmt)[0] for fmt in SIGNATURES}}
    for signature, text in written.items():
        assert re.match(signature, text.encode()), signature
        assert [s for s in written if re.match(s, text.encode())] == [signature]
    run_json = (ROOT / "tests" / "data" / "runs" / "v1-fixture" / "run.json").read_bytes()
    assert not any(re.match(s, run_json) for s in written)


def test_the_no_clobber_writer_keeps_a_file_that_exists(tmp_path):
    (tmp_path / "f").write_text("first")
    with pytest.raises(FileExistsError):
        safe_files.write_bytes(tmp_path / "f", tmp_path, b"second", replace=False)
    assert (tmp_path / "f").read_text() == "first" and sorted(p.name for p in tmp_path.iterdir()) == ["f"]
    safe_files.write_bytes(tmp_path / "g", tmp_path, b"new", replace=False)
    assert (tmp_path / "g").read_text() == "new"


def test_site_writes_only_into_a_directory_of_its_own(work, capsys):
    (work / "mine").mkdir()
    (work / "mine" / "index.html").write_text("my page")
    code, err = bench(capsys, "site", "-o", "mine")
    assert code == 2 and "a directory that bench did not build" in err and "--force" in err
    assert (work / "mine" / "index.html").read_text() == "my page"
    code, err = bench(capsys, "site", "-o", "mine/index.html")
    assert code == 2 and "exists and is not a directory" in err


# ------------------------------------------------------------------ two runs with one --run-id (issue 28)


def test_a_run_held_by_another_process_is_never_called_half_made(work, capsys):
    """The loser of two runs started with one --run-id was told to `rm -r` the winner's directory: while another
    process holds a run (creating or writing it), every message says so, and nothing tells to remove it."""
    from bench.records.schema import RunMeta

    meta = RunMeta.model_validate_json((work / "results" / "one" / "run.json").read_bytes())
    held = RunDir(work / "results", "held")
    held.create(meta.model_copy(update={"run_id": "held"}), (work / "s.yaml").read_bytes(), hold=True)
    try:
        proc = run_bench("run", "s.yaml", "--run-id", "held", cwd=work, check_exit=2)
        assert f"held by another run, pid {os.getpid()}" in proc.stderr and "rm -r" not in proc.stderr
        (work / "results" / "half").mkdir()  # made by an older bench, not renamed in whole: held while it is made
        with RunDir(work / "results", "half").writer():
            proc = run_bench("run", "s.yaml", "--run-id", "half", cwd=work, check_exit=2)
        assert "held by another run" in proc.stderr and "rm -r" not in proc.stderr
    finally:
        with held.writer():  # the kept lock is taken over, then released
            pass
    code, err = bench(capsys, "run", "s.yaml", "--run-id", "held")
    assert code == 2 and "already exists" in err and "--resume held" in err
    assert not [p for p in (work / "results").iterdir() if p.name.startswith(".")]  # no hidden directory left


def test_two_runs_started_at_once_with_one_run_id(tmp_path):
    """Issue 28: in 2 of 5 trials the loser pointed at the winner's directory with `rm -r`. Three trials of two real
    `bench run --run-id same` processes started together: one runs, the other says another run holds it."""
    write_suite(tmp_path / "s.yaml", SUITE.replace("token_delay_s: 0.001", "token_delay_s: 0.2"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for trial in range(3):
        procs = [subprocess.Popen([sys.executable, "-m", "bench", "run", "s.yaml", "--run-id", f"r{trial}"],
                                  cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        errs = [p.communicate(timeout=300)[1] for p in procs]
        codes = sorted(p.returncode for p in procs)
        assert codes == [0, 2], errs
        loser = errs[[p.returncode for p in procs].index(2)]
        assert "rm -r" not in loser and "Traceback" not in loser, loser
        assert "held by another run" in loser or "already exists" in loser, loser
        assert load_run(tmp_path / "results" / f"r{trial}").records
    assert not [p for p in (tmp_path / "results").iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------------ labels in Markdown (issue 28)

HOSTILE_LABELS = {"a": "<img src=x onerror=alert(1)>", "b": "pipe|in `label` [x](javascript:y)"}


def test_labels_reasons_and_output_are_escaped_in_the_markdown_report(work, capsys):
    """A variant label `<img onerror=...>` landed verbatim in report.md (the HTML report escaped it): every cell,
    heading, list item and code block from user input now reads as text, and no table gains a column."""
    from bench.records.schema import CaseRecord

    run = work / "results" / "one"
    records = record_lines(run)
    relabelled = [r.model_copy(update={"case": r.case.model_copy(update={
        "variant": HOSTILE_LABELS[r.variant], "reference": HOSTILE_LABELS["a"]})}) for r in records]
    first = relabelled[0].model_dump(mode="json")
    failed = CaseRecord.model_validate({**first, "case": {**first["case"], "id": "x.failed"}, "status": "failed",
                                        "metrics": {}, "reason": "<script>alert(2)</script>\n| not | a | row |",
                                        "output_tail": "```\n<img src=y onerror=alert(3)>\n```"})
    meta = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**meta, "case_ids": [*meta["case_ids"], "x.failed"]}))
    (run / "cases.jsonl").write_text("".join(r.model_dump_json() + "\n" for r in [*relabelled, failed]))
    code, err = bench(capsys, "report", "one", "--no-html")
    assert code == 0, err
    report = (work / "reports" / "one" / "report.md").read_text()
    outside_fences = re.sub(r"(?ms)^ *(`{3,})\n.*?^ *\1$", "", report)
    assert "<img" not in outside_fences and "<script" not in report and "](javascript" not in report
    assert "&lt;img src=x onerror=alert(1)&gt;" in report and "pipe\\|in \\`label\\`" in report
    fence = re.search(r"(?m)^ *(`{4,})$", report)
    assert fence, "the output tail's own ``` must not close its code block"
    for block in re.findall(r"(?m)(?:^\|.*\|\n)+", report):  # every table keeps its columns in every row
        widths = {len(re.split(r"(?<!\\)\|", line)) for line in block.splitlines()}
        assert len(widths) == 1, block


def test_alert_markdown_escapes_case_names_and_reasons():
    from bench.gate import alerts
    from bench.gate.compare import compare_runs, rule_from
    from bench.gate.result import CaseProblem

    fixture = load_run(ROOT / "tests" / "data" / "runs" / "v1-fixture")
    result = compare_runs(fixture, fixture, rule_from(fixture))
    result = result.model_copy(update={"failed": [CaseProblem(run="b", case="x`y|z", reason="<img onerror=1>\n|a|")]})
    text = alerts.markdown(result)
    line = next(line for line in text.splitlines() if "failed in b" in line)
    assert line == "- **failed in b**: ``x`y\\|z``: &lt;img onerror=1&gt;<br>\\|a\\|", line
