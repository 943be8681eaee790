"""The conformance matrix (bench/report/conformance.py) from a real small run, in Markdown and HTML.

Two models x four variants of the known-answer backend, perplexity only (a worker per case is the
cost): one fine (the reference), one fine with other timings (same logits: perplexity difference
exactly 0), one that raises (failed), one whose package is missing (skipped, with the install line).
Each cell must say what happened to that model and variant.
"""
from __future__ import annotations

import re

from bench.records import load_run
from bench.report import html, markdown
from bench.report.conformance import matrix, verdicts
from bench.report.tables import Entry
from tests.conftest import KNOWN_ANSWER, run_bench, write_suite

SUITE = f"""
name: conformance
models: [arch-a, arch-b]
backends:
  - {{backend: "{KNOWN_ANSWER}", label: ref}}
  - {{backend: "{KNOWN_ANSWER}", label: same, options: {{token_delay_s: 0.0005}}}}
  - {{backend: "{KNOWN_ANSWER}", label: broken, options: {{fail: raise}}}}
  - {{backend: "{KNOWN_ANSWER}", label: absent, options: {{fail: missing-package}}}}
reference: ref
tasks: [perplexity]
perplexity: {{text: eval.txt, window: 16, stride: 8}}
timeout_s: 60
"""


def test_conformance_matrix_says_ok_skipped_failed_per_model_and_backend(tmp_path):
    (tmp_path / "eval.txt").write_text("evaluation text " * 20)
    write_suite(tmp_path / "suite.yaml", SUITE)
    run_bench("run", "suite.yaml", "--run-id", "c", cwd=tmp_path, check_exit=3)  # a failed case: exit 3
    run = load_run(tmp_path / "results" / "c")

    found = verdicts(run.records)
    for model in ("arch-a", "arch-b"):
        assert found[(model, "ref")].status == found[(model, "same")].status == "ok"
        assert found[(model, "same")].relative_ppl_difference == 0.0
        assert found[(model, "broken")].status == "failed" and "injected failure" in found[(model, "broken")].reason
        assert found[(model, "absent")].status == "skipped" and "pip install" in found[(model, "absent")].reason

    (table,) = matrix([Entry(run.run_id, r) for r in run.records])
    assert [c.header for c in table.columns] == ["model", "ref", "same", "broken", "absent"]
    assert [[cell.text for cell in row] for row in table.rows] == [
        [model, "ok", "ok (+0.0e+00)", "failed [1]", "skipped [2]"] for model in ("arch-a", "arch-b")]
    assert table.notes[1].startswith("[1] ") and "injected failure" in table.notes[1]
    assert table.notes[2].startswith("[2] ") and "pip install" in table.notes[2]

    # a cell where one task ran and another was skipped is ok, with the skip's reason as its footnote
    skipped_latency = next(r for r in run.records if r.model == "arch-a" and r.variant == "absent")
    skipped_latency = skipped_latency.model_copy(update={"case": skipped_latency.case.model_copy(
        update={"task": "latency", "variant": "same"})})
    partly = verdicts([*run.records, skipped_latency])[("arch-a", "same")]
    assert partly.status == "ok" and partly.relative_ppl_difference == 0.0
    assert partly.reason.startswith("latency skipped: ") and "pip install" in partly.reason
    (table,) = matrix([Entry(run.run_id, r) for r in [*run.records, skipped_latency]])
    assert table.rows[0][2].text == "ok (+0.0e+00) [1]" and table.notes[1].startswith("[1] latency skipped: ")

    report = (tmp_path / "reports" / "c" / "report.md").read_text()
    section = report[report.index("## Conformance: model x backend"):]
    assert re.search(r"\| arch-b +\| ok +\| ok \(\+0\.0e\+00\) +\| failed \[1\] +\| skipped \[2\] +\|", section)
    page = html.render([run])
    assert "Conformance: model x backend" in page and "skipped [2]" in page
    assert markdown.render(run).count("## Conformance") == 1


def test_a_single_model_run_has_no_matrix():
    assert matrix([]) == []
