"""The reference's log-probabilities as entries of bench's cache: reused, evicted least recently used first,
computed again when a resumed run (or a Ray node) finds them gone, listed and pruned by `bench cache`.

Every test has its own BENCH_CACHE; the runs use the known-answer backend (a bigram table), so quality has
exact answers: the reference against itself and the same model under another label give KL exactly 0.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import yaml

from bench.measure import refcache
from bench.records.rundir import RunDir
from bench.run.cluster.bundle import reference_inputs, write_inputs
from bench.run.plan import plan
from tests.conftest import KNOWN_ANSWER, ROOT, load_records, record_lines, run_bench, write_suite

SUITE = f"""
name: refcache
models: [synthetic]
backends:
  - {{backend: "{KNOWN_ANSWER}", label: ref}}
  - {{backend: "{KNOWN_ANSWER}", label: other, options: {{fail: raise, fail_marker: fixed}}}}
reference: ref
tasks: [perplexity]
perplexity: {{text: eval.txt, window: 16, stride: 8}}
timeout_s: 60
"""


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(refcache.LIMIT_VARIABLE, raising=False)
    return tmp_path / "cache" / "logprobs"


def _suite(tmp_path, fixed: bool = True):
    (tmp_path / "eval.txt").write_text("some evaluation text for the bigram model " * 10)
    write_suite(tmp_path / "suite.yaml", SUITE)
    if fixed:
        (tmp_path / "fixed").touch()


def _perplexity(run_dir, variant: str):
    return next(r for r in load_records(run_dir) if r.variant == variant and r.task == "perplexity")


def test_a_second_run_reuses_the_entry_without_writing_it_again(tmp_path, cache):
    _suite(tmp_path)
    run_bench("run", "suite.yaml", "--run-id", "first", cwd=tmp_path)
    key = _perplexity(tmp_path / "results" / "first", "ref").perplexity.reference_logprobs
    entry = cache / key
    written = {p.name: p.stat().st_mtime_ns for p in entry.iterdir()}
    meta = refcache.read_meta(entry)
    run_bench("run", "suite.yaml", "--run-id", "second", cwd=tmp_path)
    second = tmp_path / "results" / "second"
    assert _perplexity(second, "ref").perplexity.reference_logprobs == key
    assert _perplexity(second, "other").perplexity.reference_logprobs == key
    assert _perplexity(second, "other").value("kld_max") == 0.0
    assert {p.name: p.stat().st_mtime_ns for p in entry.iterdir()} == written  # not written again
    assert refcache.read_meta(entry)["written_by"] == meta["written_by"]  # by the first run's process
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == [key]  # one entry, no leftovers


def test_an_entry_that_left_the_cache_is_computed_again_on_resume_and_must_be_the_recorded_one(tmp_path, cache):
    _suite(tmp_path, fixed=False)
    run_bench("run", "suite.yaml", "--run-id", "r", cwd=tmp_path, check_exit=3)  # `other` fails, `ref` is done
    run_dir = tmp_path / "results" / "r"
    reference = _perplexity(run_dir, "ref")
    key = reference.perplexity.reference_logprobs
    run_bench("cache", "clear", cwd=tmp_path)
    assert not (cache / key).exists()
    (tmp_path / "fixed").touch()
    run_bench("run", "--resume", "r", "--retry-failed", cwd=tmp_path)
    other = _perplexity(run_dir, "other")
    assert other.ok and other.perplexity.reference_recomputed is True
    assert other.perplexity.reference_logprobs == key and refcache.is_complete(cache / key)
    assert other.value("kld_mean") == other.value("kld_max") == other.value("delta_ppl") == 0.0  # the known answer
    assert other.value("top1_agreement") == 1.0
    log = (run_dir / "logs" / f"{other.id}.log").read_text()
    assert f"entry {key} is not in the cache" in log and f"computing them again with case {reference.id}" in log
    assert [r.variant for r in record_lines(run_dir)].count("ref") == 1  # the reference's record stays as measured
    assert _perplexity(run_dir, "ref") == reference

    # a recorded entry that computing again cannot give (the model or a library changed): not applicable, why
    lines = (run_dir / "cases.jsonl").read_text().replace(key, "0" * 24)
    (run_dir / "cases.jsonl").write_text("".join(line + "\n" for line in lines.splitlines()
                                                 if f'"{other.id}"' not in line))
    run_bench("run", "--resume", "r", cwd=tmp_path)
    again = _perplexity(run_dir, "other")
    assert again.ok and "kld_mean" not in again.metrics and again.perplexity.reference_logprobs is None
    assert again.not_applicable["quality"].startswith(f"the reference's log-probabilities: entry {'0' * 24} is not")
    assert f"gives entry {key}, not the recorded {'0' * 24}" in again.not_applicable["quality"]


def _publish(key: str, rows: int, vocab: int = 2500) -> None:
    """An entry of `rows` x `vocab` float32 (10 kB a row by default, plus ~0.5 kB of header and meta)."""
    writer = refcache.EntryWriter(key, {"rows": rows})
    writer.start_window(0, rows, vocab)
    writer.write(np.zeros((rows, vocab), dtype=np.float32))
    writer.publish({"case_id": key})


def test_the_least_recently_used_entries_go_first_and_never_one_being_read(cache, monkeypatch):
    monkeypatch.setenv(refcache.LIMIT_VARIABLE, "0.000025")  # 25 kB: two entries of 10.5 kB fit, not three
    _publish("a" * 24, 1)
    _publish("b" * 24, 1)
    os.utime(cache / ("a" * 24), (1, 1))
    os.utime(cache / ("b" * 24), (2, 2))
    reader = refcache.EntryReader("a" * 24)  # reading `a` makes it the most recently used, and holds it
    _publish("c" * 24, 1)  # three do not fit: `b`, the least recently used, goes
    assert sorted(e["key"][0] for e in refcache.listing()) == ["a", "c"]
    os.utime(cache / ("a" * 24), (1, 1))  # `a` now the oldest, but still being read: `c` goes instead
    _publish("d" * 24, 1)
    assert sorted(e["key"][0] for e in refcache.listing()) == ["a", "d"]
    reader.close()
    _publish("e" * 24, 4)  # 40 kB alone exceeds the limit: it is kept (it is needed now), every other entry goes
    assert [e["key"][0] for e in refcache.listing()] == ["e"]


def test_bench_cache_lists_prunes_and_clears(tmp_path, cache):
    _suite(tmp_path)
    run_bench("run", "suite.yaml", "--run-id", "r", cwd=tmp_path)
    key = _perplexity(tmp_path / "results" / "r", "ref").perplexity.reference_logprobs
    _publish("f" * 24, 1000, vocab=250)  # 1 MB, written after the run's entry: the most recently used
    listed = run_bench("cache", cwd=tmp_path).stdout
    assert f"{cache} (limit 10.0 GB" in listed and "2 entries" in listed
    assert f"{key}" in listed and "synthetic" in listed and "window 16 stride 8 scoring all" in listed
    assert listed.index(key) < listed.index("f" * 24)  # least recently used first
    pruned = run_bench("cache", "prune", "--max-gb", "0.00101", cwd=tmp_path).stdout  # room for `f` only
    assert f"removed {key}" in pruned and [e["key"] for e in refcache.listing()] == ["f" * 24]
    (cache / f".{'g' * 24}.staging-999999999-x").mkdir()  # what a killed writer left (no such process)
    cleared = run_bench("cache", "clear", cwd=tmp_path).stdout
    assert "removed 1 entry" in cleared and refcache.listing() == []
    assert [p for p in cache.iterdir() if not p.name.endswith(".lock")] == []
    assert "0 entries" in run_bench("cache", "list", cwd=tmp_path).stdout
    bad = run_bench("cache", "prune", "--max-gb", "-1", cwd=tmp_path, check_exit=2)
    assert "--max-gb '-1'" in bad.stderr


def test_a_bad_size_limit_is_refused_naming_the_variable(tmp_path, cache, monkeypatch):
    monkeypatch.setenv(refcache.LIMIT_VARIABLE, "lots")
    proc = run_bench("cache", cwd=tmp_path, check_exit=2)
    assert "BENCH_LOGPROBS_CACHE_GB='lots'" in proc.stderr


def test_a_perplexity_unit_without_its_reference_takes_the_reference_records_to_its_node(tmp_path, cache):
    _suite(tmp_path, fixed=False)
    run_bench("run", "suite.yaml", "--run-id", "r", cwd=tmp_path, check_exit=3)
    run = RunDir(tmp_path / "results", "r")
    reference = next(r for r in run.records() if r.variant == "ref")
    other = next(r for r in run.records() if r.variant == "other")
    [whole] = plan([reference.case, other.case])
    assert reference_inputs(run, whole) == {}  # its reference runs in the unit: nothing to send
    [resumed] = plan([other.case])
    inputs = reference_inputs(run, resumed)
    assert list(inputs) == ["cases.jsonl"] and all(".npy" not in name for name in inputs)
    scratch = RunDir(tmp_path / "scratch", "r")
    scratch.create(run.meta())
    write_inputs(scratch, inputs)
    assert scratch.records() == [reference]  # what a case on the node finds, as the driver recorded it


def test_the_nightly_uploads_no_log_probabilities():
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "nightly.yml").read_text())
    uploads = [step["with"] for job in workflow["jobs"].values() for step in job["steps"]
               if str(step.get("uses", "")).startswith("actions/upload")]
    assert len(uploads) >= 5
    for upload in uploads:
        paths = [line.strip() for line in str(upload["path"]).splitlines() if line.strip()]
        assert not any(".cache" in p or "BENCH_CACHE" in p or "logprobs" in p for p in paths), upload
        for path in paths:  # a run directory (tonight's, or a downloaded baseline) goes without any reference/
            if path.startswith(("results/", "baseline")) and "traces" not in path:
                assert f"!{path.rstrip('/')}/reference/" in paths, upload


def test_a_last_stride_suite_records_its_protocol_and_has_an_entry_of_its_own(tmp_path, cache):
    _suite(tmp_path)
    run_bench("run", "suite.yaml", "--run-id", "all", cwd=tmp_path)
    write_suite(tmp_path / "last.yaml", SUITE.replace("stride: 8}", "stride: 8, scoring: last-stride}"))
    run_bench("run", "last.yaml", "--run-id", "last", cwd=tmp_path)
    every, last = (_perplexity(tmp_path / "results" / run, "other") for run in ("all", "last"))
    n = len("some evaluation text for the bigram model " * 10)  # one token per character
    assert every.case.perplexity.scoring == "all" and every.perplexity.scored_tokens == n - 1
    assert last.case.perplexity.scoring == "last-stride"
    assert last.perplexity.scored_tokens == 8 * len(range(0, n - 16, 8))  # the last 8 of each whole window
    assert last.value("kld_max") == 0.0 and last.perplexity.quality_tokens == last.perplexity.scored_tokens
    assert last.perplexity.reference_logprobs != every.perplexity.reference_logprobs
    assert refcache.read_meta(cache / last.perplexity.reference_logprobs)["parts"]["scoring"] == "last-stride"
    assert "16 / 8, last stride" in (tmp_path / "reports" / "last" / "report.md").read_text()


def test_a_cache_that_cannot_store_them_costs_quality_with_the_reason_never_the_perplexity(tmp_path, cache):
    _suite(tmp_path)
    cache.parent.mkdir(parents=True)
    cache.write_text("not a directory")  # as a full or broken disk would: nothing can be stored there
    run_bench("run", "suite.yaml", "--run-id", "r", cwd=tmp_path)
    for variant in ("ref", "other"):
        record = _perplexity(tmp_path / "results" / "r", variant)
        assert record.ok and record.value("perplexity") > 1 and "kld_mean" not in record.metrics
        assert "log-probabilities cannot be stored in" in record.not_applicable["quality"], variant
        assert record.perplexity.reference_logprobs is None
