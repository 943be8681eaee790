"""The presentation helpers report, dashboard and gate alerts share (bench/presentation/), on known answers: one
`fmt`, the table model's Markdown (user text escaped), the Pareto front, the quality-vs-speed pairing; and the
gate's alert tables drawn in that table model."""
from __future__ import annotations

import pytest

from bench.core import markdown as md
from bench.gate.result import Comparison, Confirmation, GateResult, RuleInfo, RunRef, Status
from bench.presentation.formatting import fmt
from bench.presentation.pairing import quality_and_speed
from bench.presentation.pareto import pareto_front
from bench.presentation.table import NA, Cell, Column, Table, markdown, md_table
from bench.records.rundir import load_run
from tests.conftest import ROOT

FIXTURE = ROOT / "tests" / "data" / "runs" / "v1-fixture"


@pytest.mark.parametrize(("value", "digits", "shown"), [
    (None, 4, "n/a"),
    (2.0, 4, "2"), (2.00249, 4, "2.002"), (12345.6, 4, "1.235e+04"), (0.000123456, 4, "0.0001235"),
    (12345.6, 6, "12345.6"), (float("nan"), 4, "nan"),
    (12345, 4, "12345"), (0, 4, "0"),  # an integer (a count, a thread number) is shown whole, whatever `digits`
])
def test_fmt_shows_floats_to_significant_digits_and_integers_whole(value, digits, shown):
    assert fmt(value, digits) == shown


def test_a_cell_is_one_line_and_a_markdown_cell_stays_markdown():
    assert Cell("2.002", "[2.001, 2.004]", "3 processes").inline() == "2.002 [2.001, 2.004] (3 processes)"
    assert Cell("2.002", detail="contended").inline() == "2.002 (contended)"
    code = Cell(md.code("a|b"))
    assert isinstance(code.inline(), md.Markdown) and code.inline() == "`a\\|b`"
    assert NA.inline() == "n/a"


def test_a_tables_markdown_escapes_user_text_in_headers_cells_and_notes():
    table = Table("title, not rendered", [Column("variant <b>", left=True), Column("value")],
                  [[Cell("<img src=x onerror=alert(1)>"), Cell("1 | 2", "[0, 3]")],
                   [Cell(md.code("case`id")), Cell("line\nbreak")]],
                  ["a note with `ticks` and [a](link)", md.Markdown("already **Markdown**")])
    assert markdown(table) == ("| variant &lt;b&gt; | value |\n"
                               "|---|---|\n"
                               "| &lt;img src=x onerror=alert(1)&gt; | 1 \\| 2 [0, 3] |\n"
                               "| ``case`id`` | line<br>break |\n\n"
                               "a note with \\`ticks\\` and [a]\\(link)\n\n"
                               "already **Markdown**")
    assert md_table(["a"], []) == "| a |\n|---|"


def test_the_pareto_front_keeps_the_points_no_other_beats_on_both_axes():
    # (speed: higher is better, loss: lower is better)
    points = [(10.0, 0.5), (20.0, 0.1), (15.0, 0.3), (5.0, 0.0), (20.0, 0.2), (12.0, 0.3), (12.0, 0.3)]
    front = pareto_front(points, lambda p: p[0], lambda p: p[1])
    assert front == [(5.0, 0.0), (20.0, 0.1)]  # sorted by x; (20, 0.2) is beaten by (20, 0.1) on y alone
    # both higher-is-better (serving: total tok/s and tok/s per user); equal points beat neither
    points = [(100.0, 10.0), (200.0, 5.0), (150.0, 5.0), (50.0, 12.0), (50.0, 12.0), (40.0, 11.0)]
    assert pareto_front(points, lambda p: p[0], lambda p: p[1], y_higher=True) == [
        (50.0, 12.0), (50.0, 12.0), (100.0, 10.0), (200.0, 5.0)]
    # both lower-is-better, and the result keeps the input's objects
    objects = [{"x": 1.0, "y": 2.0}, {"x": 2.0, "y": 1.0}, {"x": 2.0, "y": 2.0}]
    front = pareto_front(objects, lambda p: p["x"], lambda p: p["y"], x_higher=False)
    assert front == objects[:2] and front[0] is objects[0]
    assert pareto_front([], lambda p: p, lambda p: p) == []


def test_quality_and_speed_pairs_each_ok_latency_case_with_its_variants_perplexity_case():
    run = load_run(FIXTURE)  # fast and slow: two latency workloads and a perplexity case each; broken, absent: none
    records = [(run.run_id, r) for r in run.records]
    pairs = quality_and_speed(records, lambda q: q.value("perplexity") is not None)
    assert [(p.speed.id, p.quality.id) for p in pairs] == [
        ("fast.synthetic.b1-p8-n6.231e87ba", "fast.synthetic.perplexity.1cb7d48c"),
        ("fast.synthetic.b2-p8-n6.447a154e", "fast.synthetic.perplexity.1cb7d48c"),
        ("slow.synthetic.b1-p8-n6.95c75550", "slow.synthetic.perplexity.8caad397"),
        ("slow.synthetic.b2-p8-n6.e60f387c", "slow.synthetic.perplexity.8caad397")]
    first = pairs[0]
    assert first.run == run.run_id and first.workload.batch_size == 1
    assert first.decode_tok_s == first.speed.value("decode_tok_s") and first.peak_rss_bytes == 116486144.0
    # the larger peak of the two cases (each ran in its own processes); None when neither measured it
    bigger = first.quality.model_copy(update={"metrics": {**first.quality.metrics, "peak_rss_bytes": 2e8}})
    no_rss = first.speed.model_copy(update={"metrics": {k: v for k, v in first.speed.metrics.items()
                                                        if k != "peak_rss_bytes"}})
    (pair,) = quality_and_speed([("r", first.speed), ("r", bigger)], lambda q: True)
    assert pair.peak_rss_bytes == 2e8
    bare = bigger.model_copy(update={"metrics": {"perplexity": 10.0}})
    assert quality_and_speed([("r", no_rss), ("r", bare)], lambda q: True)[0].peak_rss_bytes is None
    # quality the predicate refuses pairs nothing; the same variant in another run does not pair across runs
    assert quality_and_speed(records, lambda q: q.value("kld_mean") is not None and q.value("kld_mean") > 0) == []
    crossed = [("one", r) for r in run.records if r.task == "latency"] + \
              [("two", r) for r in run.records if r.task == "perplexity"]
    assert quality_and_speed(crossed, lambda q: True) == []
    # the last of a variant's perplexity cases wins (a run that evaluated several windows)
    later = first.quality.model_copy(update={"wall_seconds": 99.0})
    (pair,) = quality_and_speed([("r", first.speed), ("r", first.quality), ("r", later)], lambda q: True)
    assert pair.quality is later


def _result(comparisons: list[Comparison], confirmation: list[Confirmation] | None = None) -> GateResult:
    ref = RunRef(run_id="base", path="results/base")
    rule = RuleInfo(threshold=0.05, alpha=0.05, n_boot=2000, seed=0, metric_thresholds={}, case_thresholds={},
                    ci_level=0.95)
    return GateResult(baseline=ref, current=ref.model_copy(update={"run_id": "cur"}), rule=rule, exit_code=1,
                      verdict="1 regression(s)", comparisons=comparisons, flagged=[], summary={}, not_compared=[],
                      failed=[], skipped=[], confirmation=confirmation or [])


def test_the_alerts_tables_are_drawn_in_the_table_model_with_the_case_as_code():
    from bench.gate import alerts

    hostile = "v|<img src=x>`.tiny.b1"
    slow = Comparison(case=hostile, variant="v", metric="tpot_ms", unit="ms", better="lower",
                      method="two-stage bootstrap", baseline=2.00249, current=2.2, ratio=1.0986, ci_low=1.08,
                      ci_high=1.12, threshold=0.05, status=Status.REGRESSION)
    confirmed = Confirmation(case=hostile, metric="tpot_ms", first=Status.REGRESSION, again=None, confirmed=False)
    text = alerts.markdown(_result([slow], [confirmed]))
    assert ("| case | metric | baseline | current | change [CI] | method | threshold |\n"
            "|---|---|---|---|---|---|---|\n"
            "| ``v\\|<img src=x>`.tiny.b1`` | `tpot_ms` (ms) | 2.002 | 2.2 | +9.9 % [+8.0 %, +12.0 %] | "
            "two-stage bootstrap | 5 % |") in text
    assert ("| case | metric | first | re-measured | confirmed |\n|---|---|---|---|---|\n"
            "| ``v\\|<img src=x>`.tiny.b1`` | `tpot_ms` (ms) | regression | not measured | no |") in text
    assert "> [!CAUTION]\n> 1 regression(s)" in text and text.startswith("### 🔴 bench compare base → cur: ")
