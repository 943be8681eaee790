"""Why a flagged case moved (bench/gate/attribution.py): what changed around its two runs (envdiff) and which of its
operators moved (opdiff), in `bench compare`'s Markdown, its --json and the dashboard's compare page.

The pair at the heart of it is real: the same profiled tiny-llama case run twice, the second time with one operator
made slower (tests/slowed_op_backend.py sorts a larger tensor before each token); the baseline's records then say it
ran with another torch (rewritten with the project's types: a real run cannot install another torch)."""
from __future__ import annotations

import importlib.util
import json
import re
import shutil
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import pytest

from bench.gate.envdiff import model_identity
from bench.gate.opdiff import diff
from bench.gate.result import read_result
from bench.records import load_run
from bench.records.schema import CaseRecord, ProfileSummary, RunMeta
from bench.run import environment
from tests.conftest import KNOWN_ANSWER, ROOT, record_lines, run_bench, write_suite

TORCH = metadata.version("torch")
OLDER_TORCH = "2.12.1+cpu"


def rewrite(root: Path, source: str, name: str, meta: Callable[[RunMeta], None] | None = None,
            record: Callable[[CaseRecord], None] | None = None) -> None:
    """Copy run `source` as `name`, its run.json and records edited with the project's types."""
    shutil.copytree(root / "results" / source, root / "results" / name)
    run = root / "results" / name
    loaded = RunMeta.model_validate_json((run / "run.json").read_text())
    loaded.run_id = name
    if meta:
        meta(loaded)
    (run / "run.json").write_text(loaded.model_dump_json(indent=1))
    records = record_lines(run)
    for r in records:
        if record:
            record(r)
    (run / "cases.jsonl").write_text("".join(r.model_dump_json() + "\n" for r in records))


def older_torch(meta: RunMeta) -> None:
    """The run's environment as if it had torch OLDER_TORCH installed."""
    meta.environment.libraries["torch"] = OLDER_TORCH
    assert meta.environment.distributions is not None  # recorded by every new run
    meta.environment.distributions["torch"] = OLDER_TORCH


def ran_older_torch(r: CaseRecord) -> None:
    assert r.machine is not None and r.backend is not None
    r.machine.libraries["torch"] = r.backend.versions["torch"] = OLDER_TORCH


@pytest.fixture(scope="module")
def pair(tmp_path_factory, tiny_llama) -> Path:
    """Runs `a` (aten::sort of 16 elements before each token) and `b` (of 400,000: the injected slowdown) of one
    profiled case, and `a-older`: `a` as if run with torch OLDER_TORCH."""
    root = tmp_path_factory.mktemp("attribution")
    size = root / "sort-size.txt"
    write_suite(root / "s.yaml", f"""
        name: attribution
        models: ["{tiny_llama}"]
        backends:
          - backend: tests.slowed_op_backend:SlowedOp
            label: slowed
            options: {{sort_size_file: "{size}"}}
            profile: {{enabled: true, warmup: 1, steps: 2, decode_steps: 4}}
        workloads: [{{batch_size: 1, prompt_tokens: 16, new_tokens: 8}}]
        tasks: [latency]
        repetitions: {{warmup: 1, min: 16, max: 16, processes: 2}}
        timeout_s: 300
        """)
    for run_id, elements in (("a", 16), ("b", 400_000)):
        size.write_text(str(elements))
        run_bench("run", "s.yaml", "--run-id", run_id, cwd=root)
    rewrite(root, "a", "a-older", older_torch, ran_older_torch)
    return root


def _section(markdown: str, title: str) -> str:
    return markdown.split(f"#### {title}", 1)[1].split("\n#### ", 1)[0]


def _table_rows(section: str) -> list[list[str]]:
    """The cells of a Markdown table's data rows (header and rule left out)."""
    rows = [line.strip("|").split(" | ") for line in section.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in row] for row in rows[1:]]


def test_a_new_run_records_every_installed_distribution():
    recorded = environment.fingerprint().distributions
    assert recorded is not None
    installed = {d.metadata["Name"] for d in metadata.distributions()}
    assert set(recorded) == installed and len(recorded) > len(environment.LIBRARIES)
    assert recorded["pytest"] == metadata.version("pytest") and recorded["torch"] == TORCH


def test_the_changed_version_comes_first_and_the_slowed_operator_tops_the_operator_diff(pair):
    proc = run_bench("compare", "a-older", "b", "--json", "ab.json", cwd=pair, check_exit=None)
    assert proc.returncode in (1, 4), proc.stdout + proc.stderr  # a regression, or inconclusive: flagged either way
    result = read_result(pair / "ab.json", "--json")
    (case,) = result.flagged
    # what changed: torch first (the case's backend reports it as what ran it); no other package differs
    first = result.environment_changes[0]
    assert (first.kind, first.name, first.baseline, first.current, first.cases) == (
        "backend package", "torch", OLDER_TORCH, TORCH, [case])
    assert [c.name for c in result.environment_changes if c.kind.endswith("package")] == ["torch"]
    rows = _table_rows(_section(proc.stdout, "What changed between the runs"))
    assert rows[0] == ["backend package (tests.slowed_op_backend:SlowedOp)", "`torch`", OLDER_TORCH, TORCH, case]
    # which operators moved: the sort, per profiled generation (the prefill and 4 decode steps: 5 calls)
    (ops,) = result.operator_diffs
    assert ops.profiled == "both" and ops.clock == "cpu"
    top = ops.operators[0]
    assert top.name == "aten::sort" and top.change_ms > 0 and top.baseline_calls == top.current_calls == 5
    assert abs(top.change_ms) == max(abs(o.change_ms) for o in ops.operators)
    section = _section(proc.stdout, "Which operators moved")
    assert _table_rows(section.split(f"##### {case}\n", 1)[1])[0][0] == "`aten::sort`"
    # its before/after figures, per profiled generation: the split sums to the operators' total; time outside them
    assert ops.baseline is not None and ops.current is not None
    for side in (ops.baseline, ops.current):
        assert side.generations == 2 and side.split_ms is not None and side.operators_ms is not None
        assert sum(side.split_ms.values()) == pytest.approx(side.operators_ms)
        assert side.wall_ms is not None and side.outside_operators_ms is not None
        assert side.outside_operators_ms == pytest.approx(side.wall_ms - side.operators_ms)
    assert ops.current.split_ms["other"] > ops.baseline.split_ms["other"]  # aten::sort is neither attention nor matmul
    figures = _table_rows(section.split(f"##### {case}: before and after", 1)[1])
    assert [row[0] for row in figures][:5] == ["attention", "matmul", "other", "all operators",
                                               "outside operators (Python, loop, dispatch)"]


def test_the_backends_own_packages_come_first_then_hardware_threads_model_other_packages(pair):
    """Changes of every kind at once: the order follows relevance, not the alphabet or the record's layout."""
    def meta(m: RunMeta) -> None:
        older_torch(m)
        assert m.environment.distributions is not None
        m.environment.distributions["PyYAML"] = "1.0"  # a package neither the backend nor bench's libraries name
        m.environment.distributions["aaa-added-later"] = "0.1"  # installed only in the baseline
        m.environment.thread_env["OMP_NUM_THREADS"] = "7"

    def record(r: CaseRecord) -> None:
        ran_older_torch(r)
        assert r.machine is not None and r.backend is not None
        r.backend.versions["transformers"] = "4.0.0"
        r.machine.hostname, r.machine.gpu_driver = "another-host", "550.1"
        r.model_path = "/elsewhere/tiny-llama-0123456789ab"  # another recipe hash

    rewrite(pair, "a", "a-many", meta, record)
    result = read_result(_compare_json(pair, "a-many", "b"), "--json")
    names = [c.name for c in result.environment_changes if c.kind != "machine state"]
    assert names == ["torch", "transformers", "GPU driver", "$OMP_NUM_THREADS", "model", "aaa-added-later",
                     "PyYAML", "host"]
    kinds = [c.kind for c in result.environment_changes if c.kind != "machine state"]
    assert kinds == ["backend package", "backend package", "hardware and driver", "threads", "model and conversion",
                     "package", "package", "other"]
    added = next(c for c in result.environment_changes if c.name == "aaa-added-later")
    assert (added.baseline, added.current) == ("0.1", None)


def test_a_long_list_of_other_packages_is_cut_in_the_table_and_kept_whole_in_the_result():
    """After an unpinned install many packages move: the table lists the first PACKAGE_ROWS of them, never cuts the
    more relevant kinds, and says how many more the --json file has."""
    from bench.gate.attribution import PACKAGE_ROWS, environment_table
    from bench.gate.envdiff import EnvironmentChange

    def change(kind: str, name: str) -> EnvironmentChange:
        return EnvironmentChange(kind=kind, name=name, baseline="1", current="2", cases=["c"])

    changes = [change("backend package", "torch"), *(change("package", f"p{i:02d}") for i in range(PACKAGE_ROWS + 5)),
               change("other", "host")]
    table = environment_table(changes, flagged=1)
    assert table is not None
    assert [row[1] for row in table.rows] == ["torch", *(f"p{i:02d}" for i in range(PACKAGE_ROWS)), "host"]
    assert table.notes == ["5 more packages differ (the --json file lists them all)"]


def test_a_model_is_named_by_its_files_not_by_where_a_runner_keeps_them():
    snapshot = "models--Qwen--Qwen2.5-0.5B/snapshots/060db6499f32faf8b98477b0a26969ef7d8b9987"
    one, other = (model_identity(f"/home/{runner}/.cache/huggingface/hub/{snapshot}") for runner in ("a", "b"))
    assert one == other == "Qwen/Qwen2.5-0.5B@060db6499f32faf8b98477b0a26969ef7d8b9987"
    assert model_identity(f"/home/a/.cache/huggingface/hub/{snapshot[:-3]}000") != one  # another revision
    assert model_identity("/root/.cache/bench/models/tiny-llama-459cdaacc9d3") == "tiny-llama-459cdaacc9d3"


def _compare_json(root: Path, baseline: str, current: str, *args: str) -> Path:
    out = root / f"{baseline}-{current}.json"
    run_bench("compare", baseline, current, "--json", out.name, *args, cwd=root, check_exit=None)
    return out


def test_a_run_from_before_every_distribution_was_recorded_adds_no_package_noise(pair):
    """A baseline whose environment names only bench's few libraries: the packages it does not name are unknown
    there, not added in the current run."""
    def meta(m: RunMeta) -> None:
        older_torch(m)
        m.environment.distributions = None

    rewrite(pair, "a", "a-before", meta, ran_older_torch)
    result = read_result(_compare_json(pair, "a-before", "b"), "--json")
    assert [c.name for c in result.environment_changes if c.kind.endswith("package")] == ["torch"]


def test_nothing_changed_no_section_and_nothing_flagged_no_attribution(pair):
    """The same run with its timings made slower by its records alone (environment and profile untouched): flagged,
    and no environment section; nothing flagged: nothing attributed."""
    from bench.measure.latency import derive

    rewrite(pair, "b", "b-slow")
    samples = pair / "results" / "b-slow" / "samples"
    records = record_lines(pair / "results" / "b-slow")
    for r in records:
        path = samples / f"{r.id}.json"
        raw = json.loads(path.read_text())
        assert r.workload is not None
        stamps = [[int(s * 1.5) for s in rep] for rep in raw["stamps_ns"]]
        derived, metrics = derive(stamps, r.workload.batch_size, r.workload.prompt_tokens, raw["process"])
        path.write_text(derived.model_dump_json())
        r.metrics.update(metrics)
    (pair / "results" / "b-slow" / "cases.jsonl").write_text("".join(r.model_dump_json() + "\n" for r in records))
    proc = run_bench("compare", "b", "b-slow", "--json", "slow.json", cwd=pair, check_exit=None)
    result = read_result(pair / "slow.json", "--json")
    assert result.flagged and result.environment_changes == []
    assert "What changed between the runs" not in proc.stdout
    assert [d.profiled for d in result.operator_diffs] == ["both"]  # the same profile on both sides: all 0
    assert all(o.change_ms == 0 for o in result.operator_diffs[0].operators)
    # A/A with a threshold no interval reaches (a noisy run's own A/A may be inconclusive at 5 %)
    proc = run_bench("compare", "b", "b", "--threshold", "5", "--json", "same.json", cwd=pair, check_exit=0)
    same = read_result(pair / "same.json", "--json")
    assert not same.flagged and same.environment_changes == [] and same.operator_diffs == []
    assert "What changed" not in proc.stdout and "Which operators moved" not in proc.stdout


def test_a_case_profiled_on_one_side_only_says_so(pair):
    def unprofiled(r: CaseRecord) -> None:
        r.profile = None

    rewrite(pair, "a", "a-unprofiled", None, unprofiled)
    proc = run_bench("compare", "a-unprofiled", "b", "--json", "one.json", cwd=pair, check_exit=None)
    result = read_result(pair / "one.json", "--json")
    (ops,) = result.operator_diffs
    assert ops.profiled == "current only" and ops.operators == [] and ops.notes == ["baseline: not profiled"]
    section = _section(proc.stdout, "Which operators moved")
    assert _table_rows(section.split("without a profile on both sides", 1)[1]) == [
        [f"`{ops.case}`", "current only", "baseline: not profiled"]]


def test_a_profile_that_kept_only_its_top_operators_leaves_the_others_unknown(pair):
    """A profile recorded before every operator was kept (ProfileSummary.ops None): an operator missing from its top
    list has no figure there, rather than a made-up 0."""
    (before,) = load_run(pair / "results" / "a").records
    (after,) = load_run(pair / "results" / "b").records
    assert before.profile is not None and before.profile.ops is not None
    old = before.model_copy(deep=True)
    old.profile = ProfileSummary.model_validate({**before.profile.model_dump(), "ops": None,
                                                 "top_ops": before.profile.top_ops[:3]})
    found = diff(before.id, old, after)
    listed = {op["name"] for op in before.profile.top_ops[:3]}
    assert all((o.baseline_ms is None) == (o.name not in listed) for o in found.operators)
    assert any("recorded only its top operators" in note for note in found.notes)
    assert all((o.change_ms is None) == (o.name not in listed) for o in found.operators)


@pytest.fixture(scope="module")
def native(tmp_path_factory, tiny_llama) -> Path:
    """Two runs of an ONNX Runtime case and a llama.cpp case, profiled with their runtimes' own profilers."""
    for module in ("onnxruntime", "onnxruntime_genai", "llama_cpp"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed: pip install 'bench[onnx,gguf]'")
    root = tmp_path_factory.mktemp("native")
    write_suite(root / "s.yaml", f"""
        name: native
        models: ["{tiny_llama}"]
        backends:
          - {{backend: onnx-ort, label: ort}}
          - {{backend: llama-cpp, label: gguf, options: {{quant: f32}}}}
        profile: {{enabled: true, warmup: 1, steps: 2}}
        workloads: [{{batch_size: 1, prompt_tokens: 16, new_tokens: 8}}]
        tasks: [latency]
        repetitions: {{warmup: 1, min: 5, max: 5, processes: 1}}
        timeout_s: 300
        """)
    for run_id in ("n1", "n2"):
        run_bench("run", "s.yaml", "--run-id", run_id, cwd=root)
    return root


def test_native_profiles_give_what_their_runtimes_allow(native):
    """One process per run: the gate cannot decide (inconclusive), so both cases are flagged and diffed."""
    proc = run_bench("compare", "n1", "n2", "--json", "n.json", cwd=native, check_exit=None)
    result = read_result(native / "n.json", "--json")
    variants = {r.id: r.variant for r in load_run(native / "results" / "n2").records}
    diffs = {variants[d.case]: d for d in result.operator_diffs}
    assert set(diffs) == {"ort", "gguf"} and all(d.profiled == "both" for d in diffs.values())
    # ONNX Runtime: operator types' kernel times and the split; nothing outside operators (it times its own session)
    ort = diffs["ort"]
    assert ort.operators and {"MatMul"} & {o.name for o in ort.operators}
    assert ort.current is not None and ort.current.split_ms is not None and ort.current.outside_operators_ms is None
    assert any("no time outside operators" in note for note in ort.notes)
    # llama.cpp: phases only, per generation (its totals cover the warm-up too: 3 generations)
    gguf = diffs["gguf"]
    record = next(r for r in load_run(native / "results" / "n2").records if r.variant == "gguf")
    assert record.profile is not None and record.profile.phases_ms is not None
    assert gguf.operators == [] and gguf.current is not None and gguf.current.generations == 3
    assert gguf.current.phases_ms == pytest.approx({k: v / 3 for k, v in record.profile.phases_ms.items()})
    assert any("phases only" in note for note in gguf.notes)
    section = _section(proc.stdout, "Which operators moved")
    assert re.search(r"^\| phase: eval \| ", section, flags=re.MULTILINE)


def test_the_compare_page_shows_both_parts_for_the_pair(pair, tmp_path):
    """The dashboard's compare page (bench/site): the gate's pair carries the tables, and Chromium draws them."""
    from bench.site.build import build
    from tests.test_compare import _chromium_run
    from tests.test_site import _site_data

    results = tmp_path / "results"
    for name in ("a-older", "b"):
        shutil.copytree(pair / "results" / name, results / name)
    build(results, None, tmp_path / "site", None, cache=None)
    (pair_data,) = _site_data(tmp_path / "site" / "compare.html")["compare"]["pairs"].values()
    titles = [t["title"] for t in pair_data["attribution"]]
    assert titles[:2] == ["What changed between the runs", "Which operators moved"]
    assert pair_data["attribution"][0]["rows"][0][1:4] == ["torch", OLDER_TORCH, TORCH]
    assert pair_data["attribution"][2]["rows"][0][0] == "aten::sort"
    shutil.which("chromium") or pytest.skip("headless Chromium is not installed (apt-get install -y chromium)")
    dom = _chromium_run((tmp_path / "site" / "compare.html").as_uri(), tmp_path, "--virtual-time-budget=5000",
                        "--dump-dom").stdout
    assert '<h3 class="attribution">What changed between the runs</h3>' in dom
    table = dom.split('<h3 class="attribution">Which operators moved</h3>', 1)[1]
    assert re.search(r"<td[^>]*>aten::sort</td>", table.split("</table>", 1)[0])


def test_bench_profile_re_measures_only_the_chosen_cases_with_their_profile(tmp_path):
    """The nightly's confirm job re-measures what it flagged with `bench profile --only-from`: the selection options
    work there as for `run` (here --only, the same selection), and every chosen latency case is profiled."""
    write_suite(tmp_path / "s.yaml", f"""
        name: chosen
        models: [none]
        backends:
          - {{backend: "{KNOWN_ANSWER}", label: kept, options: {{token_delay_s: 0.001}}}}
          - {{backend: "{KNOWN_ANSWER}", label: left-out, options: {{token_delay_s: 0.001}}}}
        workloads: [{{batch_size: 1, prompt_tokens: 8, new_tokens: 4}}]
        tasks: [latency]
        repetitions: {{warmup: 0, min: 3, max: 3, processes: 1}}
        """)
    run_bench("profile", "s.yaml", "--only", "kept", "--run-id", "p", cwd=tmp_path)
    (record,) = load_run(tmp_path / "results" / "p").records
    assert record.variant == "kept" and record.profile is not None  # profiled (this backend has no profiler)
    assert record.profile.profiler == "none" and "no profiler hook" in (record.profile.reason or "")


def test_the_nightly_profiles_both_sides_of_what_it_confirms():
    """The confirm job's re-measurement is `bench profile --only-from`; its baseline is a nightly of
    suites/nightly.yaml, which profiles every latency case: a confirmed regression's alert has both profiles."""
    import yaml

    from bench.suite import load_suite

    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "nightly.yml").read_text())
    (step,) = [s for s in workflow["jobs"]["confirm"]["steps"] if s.get("id") == "compare"]
    assert re.search(r"python -m bench profile suites/nightly\.yaml .*--only-from first\.json", step["run"])
    suite_runs = re.findall(r"python -m bench run (\S+)", "\n".join(s.get("run", "") for s in
                                                                   workflow["jobs"]["gpu-suite"]["steps"]))
    assert suite_runs == ["suites/nightly.yaml"]
    _, cases = load_suite(ROOT / "suites" / "nightly.yaml")
    latency = [c for c in cases if c.task == "latency"]
    assert latency and all(c.profile is not None and c.profile.enabled for c in latency)
