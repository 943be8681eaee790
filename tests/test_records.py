"""Typed records and the one loader: a run written in format 1 (before records were typed) still loads,
reports and compares; a format-2 run written before the description's typed fields (KV cache, attention,
attention shape, peak bandwidth source) loads them typed and reports the tables it reported then; a new run
writes the current format; the writer lock and torn-line repair hold."""
from __future__ import annotations

import json
import shutil

import pytest

from bench.core.description import AttentionShape, KVCacheInfo
from bench.records import FORMAT_VERSION, RunDir, RunError, load_run
from bench.records.schema import CaseRecord, Estimate, Summary
from bench.records.upgrade import typed_description
from bench.suite import load_suite
from tests.conftest import ROOT, run_bench

V1 = ROOT / "tests" / "data" / "runs" / "v1-fixture"  # written by bench at 3ee83e2 (format 1), known-answer backend


@pytest.fixture
def v1_run(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(V1, results / "v1-fixture")
    return tmp_path, results / "v1-fixture"


def test_a_format_1_run_loads_into_typed_records(v1_run, monkeypatch):
    cwd, path = v1_run
    (cwd / "eval.txt").write_text("the fixture's evaluation text " * 20)
    monkeypatch.chdir(cwd)  # the suite names eval.txt relative to where bench runs
    run = load_run(path)
    assert run.meta.format_version == 1 and run.reference == "fast"
    assert run.meta.regression.metrics == {"load_s": 0.5}  # read from its suite snapshot
    by_status = {s: [r for r in run.records if r.status == s] for s in ("ok", "failed", "skipped")}
    assert [len(by_status[s]) for s in ("ok", "failed", "skipped")] == [6, 3, 3]
    fast = next(r for r in run.records if r.variant == "fast" and r.task == "latency" and r.workload.batch_size == 1)
    assert fast.case.backend == "tests.known_answer_backend:KnownAnswerBackend"  # from cases/<id>.json
    assert isinstance(fast.metrics["tpot_ms"], Summary) and fast.value("tpot_ms") == pytest.approx(2.0, rel=0.01)
    assert fast.latency.repetitions == 8 and fast.latency.stop_reason == "ci_target_met"
    assert fast.backend.mechanism.startswith("known-answer") and fast.backend.model_size_bytes == 512
    assert "repetitions" not in fast.metrics and "stop_reason" not in fast.metrics
    assert fast.backend.peak_memory_bandwidth_source.startswith("peak memory bandwidth of device 'cpu' is not known")
    assert "peak_memory_bandwidth_source" not in fast.backend.details  # a typed field now
    ppl = next(r for r in run.records if r.variant == "slow" and r.task == "perplexity")
    assert isinstance(ppl.metrics["delta_ppl"], Estimate) and ppl.metrics["delta_ppl"].ci_low == 0.0
    assert "format 1" in ppl.metrics["delta_ppl"].method and ppl.perplexity.windows > 0
    assert "delta_ppl_ci" not in ppl.metrics
    assert run.samples(fast.id).ttft_ms[0] == pytest.approx(3.0, rel=0.01)
    # the same suite expands to the same case ids today, so an old baseline compares case by case
    _, cases = load_suite(V1 / "suite.yaml")
    assert [c.id for c in cases] == run.meta.case_ids


def test_a_format_1_run_still_reports_and_compares_through_the_cli(v1_run):
    cwd, _ = v1_run
    run_bench("report", "v1-fixture", cwd=cwd)
    report = (cwd / "reports" / "v1-fixture" / "report.md").read_text()
    assert "## synthetic: latency and throughput, batch 1, prompt 8 tokens, 6 new tokens" in report
    assert "| fast | 3.006 [3.005, 3.014] | 2.002 [2.002, 2.004] |" in report  # the recorded medians and CIs
    assert "1.500x" in report and "RuntimeError: injected failure" in report
    assert (cwd / "reports" / "v1-fixture" / "report.html").exists()
    proc = run_bench("compare", "v1-fixture", "v1-fixture", "--json", "c.json", cwd=cwd, check_exit=3)
    result = json.loads((cwd / "c.json").read_text())
    assert "6 failed case(s)" in result["verdict"]  # 3 in each run: the gate does not vouch for them
    # an A/A of a one-process run: never a change; its timings are too little data for any verdict (issue 19)
    assert {c["status"] for c in result["comparisons"]} <= {"unchanged", "not gated", "inconclusive"}
    assert all(c["note"].startswith("too little data for a verdict") for c in result["comparisons"]
               if c["status"] == "inconclusive")
    assert "Traceback" not in proc.stderr
    run_bench("export", "v1-fixture", "--format", "csv", "-o", "v1.csv", cwd=cwd)
    assert ",tpot_ms,ms,lower," in (cwd / "v1.csv").read_text()


# attention-aa-1, a real format-2 run of suites/attention.yaml's shape (5 tiny-llama variants, hf-eager) written
# at df70d25, before the typed fields: its facts are in `details`; model_path made relative (models/<model>) so a
# test gives each its config.json. The expected sections are what bench at df70d25 reported on it.
V2_DETAILS = ROOT / "tests" / "data" / "runs" / "v2-details-fixture"
V2_SECTIONS = ROOT / "tests" / "data" / "runs" / "v2-details-fixture.sections.md"
V2_CONFIGS = {"tiny-llama": (2, None), "tiny-llama-kv2": (2, None), "tiny-llama-kv1": (1, None),
              "tiny-llama-mha": (4, None), "tiny-llama-swa": (2, 64)}  # KV heads, sliding window


@pytest.fixture
def details_run(tmp_path, monkeypatch):
    shutil.copytree(V2_DETAILS, tmp_path / "results" / "v2-details")
    for model, (kv_heads, window) in V2_CONFIGS.items():
        (tmp_path / "models" / model).mkdir(parents=True)
        (tmp_path / "models" / model / "config.json").write_text(json.dumps(
            {"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": kv_heads, "hidden_size": 256,
             "head_dim": 64, "sliding_window": window}))
    monkeypatch.chdir(tmp_path)  # the records' model paths are relative
    return tmp_path


def _study_sections(report: str) -> str:
    return "## Attention kernels" + report.split("## Attention kernels")[1].split("## Conformance")[0]


def test_a_run_from_before_the_typed_description_fields_loads_them_typed(details_run):
    records = {r.model: r for r in load_run(details_run / "results" / "v2-details").records}
    base = records["tiny-llama"].backend
    assert base.kv_cache == KVCacheInfo(kind="dynamic", element_bits=32, bytes=325632, tokens=159, sequences=1)
    assert base.attention.requested == "sdpa-flash" and base.attention.verified
    assert base.attention.kernel_ops == {"aten::scaled_dot_product_attention": 4,
                                         "aten::_scaled_dot_product_flash_attention_for_cpu": 4}
    assert set(base.details) == {"attn_implementation", "decode_loop"}  # what stays free-form
    # the attention shape: each model's config.json, read when the run is loaded, as reports did then
    assert base.attention_shape == AttentionShape(layers=2, attention_heads=4, kv_heads=2, head_dim=64)
    assert records["tiny-llama-kv1"].backend.attention_shape.kv_heads == 1
    assert records["tiny-llama-swa"].backend.attention_shape.sliding_window == 64


def test_a_run_from_before_the_typed_fields_reports_the_tables_it_reported_then(details_run):
    run_bench("report", "v2-details", "--no-html", cwd=details_run)
    report = (details_run / "reports" / "v2-details" / "report.md").read_text()
    assert _study_sections(report) == V2_SECTIONS.read_text()
    # written again as bench writes records now (typed), its model directories gone: the same tables, from the
    # attention shape the records hold
    run_dir = details_run / "results" / "v2-details"
    lines = [r.model_copy(update={"model_path": "gone/" + r.model}).model_dump_json(exclude_none=True)
             for r in load_run(run_dir).records]
    (run_dir / "cases.jsonl").write_text("\n".join(lines) + "\n")
    shutil.rmtree(details_run / "models")
    assert all('"attention_shape"' in line and '"kv_cache"' in line for line in lines)
    run_bench("report", "v2-details", "--no-html", cwd=details_run)
    again = (details_run / "reports" / "v2-details" / "report.md").read_text()
    assert _study_sections(again) == V2_SECTIONS.read_text()


def test_the_upgrade_moves_only_what_the_typed_fields_know(tmp_path):
    old = {"case": {"task": "latency"}, "model_path": str(tmp_path / "gone"), "backend": {
        "mechanism": "m", "dtype": "float32", "device": "cpu",
        "details": {"kv_cache": {"kind": "K f16, V f16", "element_bits": 16.0, "bytes": 10, "tokens": 5,
                                 "sequences": 1, "measured_as": "llama_state_seq_get_size", "future_key": 7},
                    "peak_memory_bandwidth_source": "measured: best of 5", "quant": "q8_0"}}}
    new = typed_description(old)
    backend = new["backend"]
    assert backend["kv_cache"]["measured_as"] == "llama_state_seq_get_size" and "future_key" not in backend["kv_cache"]
    assert backend["details"] == {"kv_cache": {"future_key": 7}, "quant": "q8_0"}  # nothing lost
    assert backend["peak_memory_bandwidth_source"] == "measured: best of 5"
    assert backend["attention_shape"] is None  # its model directory is gone: unknown, as the report had it
    assert old["backend"]["details"]["peak_memory_bandwidth_source"]  # the input is left as it was
    typed = {"case": {"task": "perplexity"}, "backend": {"mechanism": "m", "dtype": "d", "device": "cpu",
                                                         "kv_cache": {"kind": "dynamic"}, "details": {"a": 1}}}
    assert typed_description(typed) == typed  # a current record is unchanged
    assert typed_description({"backend": None}) == {"backend": None}


def test_a_new_run_writes_the_current_format(tmp_path):
    (tmp_path / "eval.txt").write_text("evaluation text " * 30)
    (tmp_path / "s.yaml").write_text((V1 / "suite.yaml").read_text().replace("v1.yaml", "s.yaml"))
    run_bench("run", "s.yaml", "--run-id", "v2", cwd=tmp_path, check_exit=3)
    meta = json.loads((tmp_path / "results/v2/run.json").read_text())
    assert meta["format_version"] == FORMAT_VERSION and meta["reference"] == "fast"
    assert len(meta["suite_sha256"]) == 64
    for line in (tmp_path / "results/v2/cases.jsonl").read_text().splitlines():
        record = CaseRecord.model_validate_json(line)  # every line is a valid typed record
        assert record.case.reference == "fast"
    ids_v2 = json.loads((tmp_path / "results/v2/run.json").read_text())["case_ids"]
    assert ids_v2 == json.loads((V1 / "run.json").read_text())["case_ids"]


def test_a_run_from_a_newer_bench_is_refused_with_a_clear_message(v1_run):
    _, path = v1_run
    meta = json.loads((path / "run.json").read_text())
    (path / "run.json").write_text(json.dumps({**meta, "format_version": FORMAT_VERSION + 1}))
    with pytest.raises(RunError, match="newer than this bench reads"):
        load_run(path)


def test_one_writer_per_run_directory(tmp_path):
    run = RunDir(tmp_path, "r")
    with run.writer(), pytest.raises(RunError, match=r"is being written by pid \d+"), RunDir(tmp_path, "r").writer():
        pass
    with run.writer():  # released when the holder leaves
        pass


def test_a_torn_last_line_is_cut_off_and_kept_aside_before_appending(v1_run):
    _, path = v1_run
    cases = path / "cases.jsonl"
    whole = cases.read_bytes()
    cases.write_bytes(whole + b'{"case": {"id": "half-writ')  # a kill in mid-write
    run = RunDir(path.parent, path.name)
    with run.writer():
        pass
    assert cases.read_bytes() == whole
    assert [p.read_bytes() for p in path.glob("cases.jsonl.torn-*")] == [b'{"case": {"id": "half-writ']
