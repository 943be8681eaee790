"""The context axis: several perplexity windows in one suite, and the reports' context and quantization views.

Known answers come from the known-answer backend: its logits are a bigram table, so every window scores
the same tokens with the same perplexity (context beyond one token changes nothing), and a variant
identical to the reference has KLD exactly 0 at every window.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from bench.records.schema import CaseRecord
from bench.suite import SuiteError, load_suite
from tests.conftest import KNOWN_ANSWER, load_records, run_bench, write_suite
from tests.known_answer_backend import bigram_logits

SUITE = f"""
    name: context-axis
    models: [m]
    backends:
      - {{backend: "{KNOWN_ANSWER}", label: ref, options: {{token_delay_s: 0.0005}}}}
      - {{backend: "{KNOWN_ANSWER}", label: same, options: {{token_delay_s: 0.001}}}}
    reference: ref
    workloads: [{{batch_size: 1, prompt_tokens: [8, 32], new_tokens: 4}}]
    tasks: [latency, perplexity]
    repetitions: {{warmup: 0, min: 3, max: 3}}
    perplexity: {{window: [4, 16, 64], stride: [2, 8, 32], max_tokens: 600}}
    timeout_s: 120
"""


def test_an_int_window_keeps_the_case_ids_of_earlier_versions(tmp_path):
    path = write_suite(tmp_path / "s.yaml", f"""
        name: ids
        models: [m]
        backends:
          - backend: {KNOWN_ANSWER}
        workloads: [{{batch_size: 1, prompt_tokens: 8, new_tokens: 4}}]
        tasks: [latency, perplexity]
        perplexity: {{window: 16, stride: 8, max_tokens: 512}}
        """)
    # computed by bench at commit 46aeef1, before windows could be listed
    assert [c.id for c in load_suite(path)[1]] == [
        "tests.known_answer_backend-KnownAnswerBackend.m.b1-p8-n4.d2fcf9ad",
        "tests.known_answer_backend-KnownAnswerBackend.m.perplexity.8e451d6c"]


def test_a_list_of_windows_gives_one_perplexity_case_per_window_with_its_stride(tmp_path):
    _, cases = load_suite(write_suite(tmp_path / "s.yaml", SUITE))
    ppl = [c for c in cases if c.task == "perplexity"]
    assert [(c.variant, c.perplexity.window, c.perplexity.stride) for c in ppl] == [
        ("ref", 4, 2), ("ref", 16, 8), ("ref", 64, 32), ("same", 4, 2), ("same", 16, 8), ("same", 64, 32)]
    assert len({c.id for c in cases}) == len(cases) == 2 * (2 + 3)
    latency = [c for c in cases if c.task == "latency"]
    assert {c.perplexity.window for c in latency} == {4}  # latency cases carry the first window's settings
    one_stride = write_suite(tmp_path / "t.yaml", SUITE.replace("stride: [2, 8, 32]", "stride: 2"))
    assert {c.perplexity.stride for c in load_suite(one_stride)[1] if c.task == "perplexity"} == {2}


@pytest.mark.parametrize("perplexity, message", [
    ("{window: [4, 16], stride: [2]}", "1 strides for 2 windows"),
    ("{window: [4, 16], stride: 8}", "stride (8) must be <= window (4)"),
    ("{window: [4, 1], stride: 1}", "must be an integer from 2 to"),
    ("{window: [4, 4], stride: 1}", "a value is listed twice"),
])
def test_bad_window_lists_are_reported_with_file_and_line(tmp_path, perplexity, message):
    path = write_suite(tmp_path / "s.yaml", SUITE.replace("{window: [4, 16, 64], stride: [2, 8, 32], max_tokens: 600}",
                                                           perplexity))
    with pytest.raises(SuiteError, match="s.yaml:10") as error:
        load_suite(path)
    assert message in str(error.value)


def _bigram_perplexity(ids: list[int]) -> float:
    logprobs = bigram_logits() - np.log(np.exp(bigram_logits()).sum(axis=1, keepdims=True))
    return math.exp(-np.mean([logprobs[a, b] for a, b in itertools.pairwise(ids)]))


@pytest.fixture(scope="module")
def context_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("context")
    suite = write_suite(workdir / "s.yaml", SUITE)
    run_bench("run", str(suite), "--run-id", "r", cwd=workdir)
    return workdir, load_records(workdir / "results" / "r")


def test_every_window_scores_the_same_tokens_and_is_compared_with_its_own_reference(context_run):
    from bench.measure.evaltext import eval_text

    _, records = context_run
    ppl = [r for r in records if r.task == "perplexity"]
    assert all(r.ok for r in records) and len(ppl) == 6
    ids = [ord(ch) % 8 for ch in eval_text("stdlib-heldout")][:600]
    for r in ppl:
        assert r.perplexity is not None and r.perplexity.scored_tokens == 599  # every token after the first, once
        assert r.value("perplexity") == pytest.approx(_bigram_perplexity(ids), rel=1e-9)
        assert r.value("kld_mean") == 0 and r.value("top1_agreement") == 1  # against the same window's reference


def _report_tables(records: list[CaseRecord]):
    from bench.report import tables

    return tables.summary_tables([tables.Entry("r", r) for r in records])


def test_the_report_shows_the_context_table_and_no_quantization_table_without_a_quantized_variant(context_run):
    workdir, records = context_run
    (context,) = _report_tables(records)
    assert context.title == "m: cost against context length"
    assert [(row[0].text, row[1].text) for row in context.rows] == [("ref", "8"), ("ref", "32"), ("same", "8"),
                                                                    ("same", "32")]
    report = (workdir / "reports" / "r" / "report.md").read_text()
    assert "## m: cost against context length" in report and "quantization, quality and speed" not in report


def test_a_quantized_variant_gets_one_row_per_variant_at_the_first_window(context_run):
    _, records = context_run
    marked = [r.model_copy(update={"backend": r.backend.model_copy(update={"quantization": "int4-test"})})
              if r.variant == "same" and r.backend is not None else r for r in records]
    quantization, _ = _report_tables(marked)
    assert quantization.title == "m: quantization, quality and speed"
    rows = {row[0].text: row for row in quantization.rows}
    assert list(rows) == ["ref", "same"]  # one row per variant, at the first window only
    assert rows["same"][1].text == f"{KNOWN_ANSWER}: int4-test" and rows["ref"][1].text == f"{KNOWN_ANSWER}: float64"
    assert rows["same"][7].text == "0" and rows["same"][8].text == "1"  # KLD, top-1 against the same window's ref
    assert rows["same"][-1].text.endswith("x") and "window 4 / stride 2" in quantization.notes[0]


def test_html_report_plots_decode_time_against_context_and_perplexity_against_window(context_run):
    pytest.importorskip("matplotlib")
    pytest.importorskip("seaborn")
    workdir, _ = context_run
    html = (workdir / "reports" / "r" / "report.html").read_text()
    assert 'id="plot-context"' in html and 'id="plot-perplexity-window"' in html
    assert "m: cost against context length" in html
