"""The default job as a user runs it: suites/smoke.yaml end to end, and what its report must show."""
import json

import pytest

from tests.conftest import ROOT, load_records, run_bench

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke_run(tiny_llama, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("smoke")
    proc = run_bench("run", str(ROOT / "suites" / "smoke.yaml"), "--run-id", "smoke-test", cwd=cwd)
    return cwd, proc, load_records(cwd / "results" / "smoke-test")


def test_every_case_ran_and_is_recorded_with_its_thread_setting(smoke_run):
    cwd, _, records = smoke_run
    assert [r.status for r in records] == ["ok"] * 6
    assert {r.variant for r in records} == {"hf-eager", "bettertransformer"}
    assert all(r.case.threads == 1 and r.backend.threads == 1 for r in records)
    meta = json.loads((cwd / "results" / "smoke-test" / "run.json").read_text())
    assert meta["environment"]["libraries"]["torch"].startswith("2.13.0")
    assert meta["environment"]["cpu_count"] >= 1


def test_latency_metrics_are_consistent_with_their_raw_samples(smoke_run):
    cwd, _, records = smoke_run
    for r in (r for r in records if r.task == "latency"):
        w, n = r.workload, r.latency.repetitions
        raw = json.loads((cwd / "results" / "smoke-test" / "samples" / f"{r.id}.json").read_text())
        assert len(raw["stamps_ns"]) == n == r.summary("tpot_ms").n >= 6
        assert all(len(s) == w.new_tokens for s in raw["stamps_ns"])
        decoded = sum(s[-1] - s[0] for s in raw["stamps_ns"]) / 1e9
        assert r.value("decode_tok_s") == pytest.approx(n * w.batch_size * (w.new_tokens - 1) / decoded)
        ttft = r.summary("ttft_ms")
        assert ttft.ci_low <= ttft.median <= ttft.ci_high
        assert r.value("peak_rss_bytes") >= r.value("baseline_rss_bytes") > 0 and r.value("model_size_bytes") > 0
        assert r.latency.stop_reason in {"ci_target_met", "max_repetitions", "max_time"}


def test_eager_and_sdpa_perplexity_agree_and_mean_something(smoke_run):
    _, _, records = smoke_run
    ppl = {r.variant: r for r in records if r.task == "perplexity"}
    assert ppl["bettertransformer"].value("perplexity") == pytest.approx(ppl["hf-eager"].value("perplexity"), rel=1e-4)
    assert ppl["hf-eager"].perplexity.scored_tokens == 8191 and ppl["hf-eager"].case.perplexity.window == 256
    assert ppl["hf-eager"].value("perplexity") < 526  # unigram baseline of this corpus


def test_report_shows_the_required_metrics_for_both_backends(smoke_run):
    cwd, proc, _ = smoke_run
    report_path = cwd / "reports" / "smoke-test" / "report.md"
    assert "report: reports/smoke-test/report.md" in proc.stdout
    report = report_path.read_text()
    for heading in ["TTFT ms", "TPOT ms", "decode tok/s", "peak RSS MiB", "perplexity", "## Environment",
                    "## Glossary", "vs hf-eager"]:
        assert heading in report
    assert report.count("| hf-eager |") == report.count("| bettertransformer |") == 3 + 1  # 3 tables + "What ran"
    assert "Failed" not in report
    # the terminal table printed at the end names every case
    assert proc.stdout.count("bettertransformer") == 3
    # `bench report` regenerates the same file from the stored results
    run_bench("report", "smoke-test", cwd=cwd)
    assert report_path.read_text() == report
