"""Suites: expansion into cases, and malformed suites that name file, line, field and valid values."""
import pytest

from backends import REGISTRY
from bench.suite import SuiteError, load_suite
from tests.conftest import ROOT, run_bench, write_suite

REGISTERED = ", ".join(sorted(REGISTRY))


def test_shipped_suites_are_valid_and_expand_to_the_expected_matrix():
    suite, cases = load_suite(ROOT / "suites" / "smoke.yaml")
    assert {c.variant for c in cases} == {"hf-eager", "bettertransformer"}
    assert sorted((c.task, c.workload and c.workload.batch_size) for c in cases if c.variant == "hf-eager") == [
        ("latency", 1), ("latency", 4), ("perplexity", None)]
    assert all(c.threads == suite.threads == 1 for c in cases)
    load_suite(ROOT / "suites" / "quant.yaml")


@pytest.mark.parametrize("path", sorted((ROOT / "suites").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_suite_loads_and_expands_to_cases(path):
    suite, cases = load_suite(path)
    assert cases and suite.name == path.stem


def test_list_valued_options_and_workload_fields_expand(tmp_path):
    path = write_suite(tmp_path / "s.yaml", """
        name: grid
        models: [a, b]
        backends:
          - backend: hf-eager
            options: {dtype: [float32, bfloat16], compile: [false, true]}
        workloads: [{batch_size: [1, 2, 4], prompt_tokens: [16, 32], new_tokens: 8}]
        tasks: [latency]
        """)
    _, cases = load_suite(path)
    assert len(cases) == 2 * 4 * 6
    assert "hf-eager[dtype=bfloat16,compile=True]" in {c.variant for c in cases}
    assert len({c.id for c in cases}) == len(cases)
    assert [c.id for c in load_suite(path)[1]] == [c.id for c in cases]  # ids are stable across loads


MALFORMED = [
    ("unknown backend", "backends:\n  - backend: hf-eagr\n", 4, "backends[0].backend",
     f"registered: {REGISTERED}"),
    ("unknown field", "backends:\n  - backend: hf-eager\nworkloads:\n  - {batch_size: 1, promt_tokens: 8}\n", 6,
     "workloads[0].promt_tokens", "valid fields: batch_size, prompt_tokens, new_tokens"),
    ("bad option value", "backends:\n  - backend: hf-eager\n    options:\n      dtype: float64\n", 6,
     "backends[0].options.dtype", "'float32', 'float16' or 'bfloat16'"),
    ("unknown option", "backends:\n  - backend: bettertransformer\n    options: {flash: true}\n", 5,
     "backends[0].options.flash", "valid fields: device, dtype, compile"),
    ("bad task", "backends: [{backend: hf-eager}]\ntasks: [latency, speed]\n", 4, "tasks[1]",
     "'latency', 'perplexity' or 'serving'"),
    ("too few tokens", "backends: [{backend: hf-eager}]\nworkloads: [{new_tokens: 1}]\n", 4,
     "workloads[0].new_tokens", "from 2 to"),
    ("bad reference", "backends: [{backend: hf-eager}]\nreference: nope\n", 4, "reference",
     "valid values: hf-eager"),
    ("stride beyond window", "backends: [{backend: hf-eager}]\nperplexity: {window: 8, stride: 16}\n", 4,
     "perplexity", "stride (16) must be <= window (8)"),
]


@pytest.mark.parametrize("what, body, line, field, hint", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_suite_errors_name_file_line_field_and_valid_values(tmp_path, what, body, line, field, hint):
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\nmodels: [tiny-llama]\n" + body)
    with pytest.raises(SuiteError) as err:
        load_suite(path)
    message = str(err.value)
    assert message.startswith(f"{path}:{line}: {field}: "), message
    assert hint in message


def test_yaml_syntax_and_missing_fields(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\nmodels: [tiny-llama\nbackends: []\n")
    with pytest.raises(SuiteError, match=r"broken.yaml:3: YAML syntax error"):
        load_suite(broken)
    empty = tmp_path / "empty.yaml"
    empty.write_text("name: x\n")
    with pytest.raises(SuiteError, match=r"empty.yaml:1: models: required field is missing"):
        load_suite(empty)


def test_cli_reports_a_malformed_suite_with_exit_code_2_and_no_traceback(tmp_path):
    (tmp_path / "bad.yaml").write_text("name: bad\nmodels: [m]\nbackends:\n  - backend: nope\n")
    proc = run_bench("run", "bad.yaml", cwd=tmp_path, check_exit=2)
    expected = f"error: bad.yaml:4: backends[0].backend: unknown backend 'nope'; registered: {REGISTERED}"
    assert proc.stderr.strip() == expected
    assert not (tmp_path / "results").exists()  # nothing is started for a suite that cannot run
    assert run_bench("run", "missing.yaml", cwd=tmp_path, check_exit=2).stderr.startswith("error: missing.yaml")
    assert "no run 'nope'" in run_bench("run", "--resume", "nope", cwd=tmp_path, check_exit=2).stderr


def test_settings_added_after_format_1_leave_case_ids_alone_at_their_defaults(tmp_path):
    """Baselines match new runs case by case: a new setting changes a case's id only when it is used."""
    body = """
        name: ids
        models: [m]
        backends: [{{backend: hf-eager, profile: {profile}}}]
        tasks: [latency]
        """
    ids = {}
    profiles = [("plain", "{enabled: true}"), ("explicit", "{enabled: true, decode_steps: 4, max_trace_mb: 20}"),
                ("changed", "{enabled: true, decode_steps: 8}")]
    for name, profile in profiles:
        path = write_suite(tmp_path / f"{name}.yaml", body.format(profile=profile))
        ids[name] = [c.id for c in load_suite(path)[1]]
    assert ids["plain"] == ids["explicit"] != ids["changed"]
