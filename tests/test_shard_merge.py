"""Shards and merge without Ray (CI matrices): a deterministic partition of units, each shard a normal run,
and `bench merge` that keeps everything and refuses what cannot be one run. Through the real CLI."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.records.schema import CaseSpec, Workload
from bench.run.plan import plan
from bench.run.shard import parse, shard_cases
from tests.conftest import KNOWN_ANSWER, ROOT, record_lines, run_bench, write_suite

SUITE = f"""
name: sharded
models: [synthetic]
backends:
  - {{backend: "{KNOWN_ANSWER}", label: a, options: {{token_delay_s: 0.001}}}}
  - {{backend: "{KNOWN_ANSWER}", label: b, options: {{token_delay_s: 0.001, fail: raise, fail_marker: fixed}}}}
reference: a
workloads: [{{batch_size: [1, 2, 3], prompt_tokens: 8, new_tokens: 3}}]
tasks: [latency, perplexity]
repetitions: {{warmup: 0, min: 2, max: 2, processes: 1}}
perplexity: {{text: eval.txt, window: 16, stride: 8}}
timeout_s: 30
"""


def _case(variant: str, task: str, batch: int = 1) -> CaseSpec:
    workload = Workload(batch_size=batch, prompt_tokens=8, new_tokens=3) if task == "latency" else None
    return CaseSpec(id=f"{variant}.{task}.{batch}", suite="s", model="m", backend="x", variant=variant, task=task,
                    workload=workload, reference="a")


def test_shards_partition_units_deterministically_and_keep_a_unit_together():
    cases = [_case(v, "latency", b) for b in (1, 2, 3, 4, 5) for v in ("a", "b")] + \
            [_case(v, "perplexity") for v in ("b", "a")]
    shards = [shard_cases(cases, i, 3) for i in (1, 2, 3)]
    ids = [c.id for shard in shards for c in shard]
    assert sorted(ids) == sorted(c.id for c in cases) and len(ids) == len(set(ids))  # each case in one shard
    for unit in plan(cases):  # a unit's cases stay together
        assert sum(all(c in shard for c in unit.cases) for shard in shards) == 1
    assert [shard_cases(cases, i, 3) for i in (1, 2, 3)] == shards  # the same suite, the same partition
    assert [len(plan(s)) for s in shards] == [2, 2, 2]  # 6 units, round-robin over 3 shards
    for bad in ("0/2", "3/2", "1", "a/b", "1/0"):
        with pytest.raises(Exception, match="INDEX/COUNT"):
            parse(bad)


@pytest.mark.slow
def test_shards_merge_into_one_run_that_keeps_every_record_and_file(tmp_path):
    (tmp_path / "eval.txt").write_text("evaluation text " * 20)
    write_suite(tmp_path / "suite.yaml", SUITE)
    run_bench("run", "suite.yaml", "--shard", "1/2", "--run-id", "s1", cwd=tmp_path, check_exit=3)
    run_bench("run", "suite.yaml", "--shard", "2/2", "--run-id", "s2", cwd=tmp_path, check_exit=3)
    results = tmp_path / "results"
    metas = [json.loads((results / s / "run.json").read_text()) for s in ("s1", "s2")]
    assert [m["shard"]["index"] for m in metas] == [1, 2] and metas[0]["shard"]["count"] == 2
    assert len(metas[0]["shard"]["suite_case_ids"]) == 8
    assert not set(metas[0]["case_ids"]) & set(metas[1]["case_ids"])  # each shard a normal run of its share
    assert sorted(metas[0]["case_ids"] + metas[1]["case_ids"]) == sorted(metas[0]["shard"]["suite_case_ids"])

    # a shard resumes its own share: the failed case of shard 1 runs again there, nothing of shard 2 runs
    (tmp_path / "fixed").touch()
    run_bench("run", "--resume", "s1", "--retry-failed", cwd=tmp_path)
    assert {r.id for r in record_lines(results / "s1")} == set(metas[0]["case_ids"])

    only_one = run_bench("merge", "s1", "--run-id", "half", cwd=tmp_path)
    assert f"{len(metas[1]['case_ids'])} missing" in only_one.stderr  # the missing shard shows as missing
    run_bench("merge", "s1", "s2", "--run-id", "all", cwd=tmp_path, check_exit=3)  # s2 still has a failed case
    merged = json.loads((results / "all" / "run.json").read_text())
    assert merged["merged_from"] == ["s1", "s2"] and merged["case_ids"] == metas[0]["shard"]["suite_case_ids"]
    assert merged["suite_sha256"] == metas[0]["suite_sha256"] and merged.get("shard") is None
    lines = [(results / s / "cases.jsonl").read_text().splitlines() for s in ("s1", "s2")]
    assert (results / "all" / "cases.jsonl").read_text().splitlines() == lines[0] + lines[1]  # verbatim, retries too
    assert not (results / "all" / "reference").exists()  # the reference's log-probabilities are in the cache
    for folder in ("samples", "logs", "cases"):
        sources = {p.name for s in ("s1", "s2") for p in (results / s / folder).glob("*")}
        assert sources and {p.name for p in (results / "all" / folder).glob("*")} == sources, folder
    assert (tmp_path / "reports" / "all" / "report.md").is_file()
    # the merged run resumes like any run: its failed case (from shard 2) runs again, into the merged run
    run_bench("run", "--resume", "all", "--retry-failed", cwd=tmp_path)
    final = {r.id: r for r in record_lines(results / "all")}
    assert len(final) == 8 and all(r.ok for r in final.values())


@pytest.mark.slow
def test_merge_refuses_other_suites_overlaps_and_existing_runs(tmp_path):
    (tmp_path / "eval.txt").write_text("evaluation text " * 20)
    (tmp_path / "fixed").touch()
    write_suite(tmp_path / "suite.yaml", SUITE)
    write_suite(tmp_path / "other.yaml", SUITE.replace("batch_size: [1, 2, 3]", "batch_size: [1]"))
    run_bench("run", "suite.yaml", "--shard", "1/3", "--run-id", "s1", cwd=tmp_path)
    run_bench("run", "suite.yaml", "--shard", "1/3", "--run-id", "again", cwd=tmp_path)
    run_bench("run", "other.yaml", "--shard", "2/3", "--run-id", "o2", cwd=tmp_path)
    refusals = {
        ("s1", "o2", "--run-id", "m"): "ran different suites",
        ("s1", "again", "--run-id", "m"): "must not overlap",
        ("s1", "s1", "--run-id", "m"): "named twice",
        ("s1", "--run-id", "again"): "already exists",
        ("s1", "nope", "--run-id", "m"): "no run 'nope'",
    }
    for args, message in refusals.items():
        proc = run_bench("merge", *args, cwd=tmp_path, check_exit=2)
        assert message in proc.stderr, proc.stderr
    assert not (tmp_path / "results" / "m").exists()  # nothing written by a refused merge


def test_the_ray_executor_is_imported_only_when_asked_for_and_its_absence_is_explained(tmp_path):
    probe = ("import sys; from bench.cli import build_parser; build_parser().parse_args(['run', 'x.yaml']); "
             "print('ray' in sys.modules, 'bench.run.cluster.ray_executor' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True,
                         timeout=60)
    assert out.stdout.split() == ["False", "False"]
    (tmp_path / "eval.txt").write_text("evaluation text " * 20)
    write_suite(tmp_path / "suite.yaml", SUITE)
    without_ray = ("import sys; sys.modules['ray'] = None; from bench.cli import main; "
                   "sys.exit(main(['run', 'suite.yaml', '--executor', 'ray']))")
    proc = subprocess.run([sys.executable, "-c", without_ray], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, check=False, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2 and "pip install 'bench[ray]'" in proc.stderr, proc.stderr
    assert not (tmp_path / "results").exists()  # refused before anything was written
