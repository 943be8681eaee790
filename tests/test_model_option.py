"""`--model`: bring your own model to any suite without editing its YAML (run and validate), recorded in the run."""
import json

from bench.records import load_run
from tests.conftest import KNOWN_ANSWER, run_bench, write_suite

SUITE = f"""
name: byo
models: [org/suite-model]
backends:
  - {{backend: "{KNOWN_ANSWER}", label: a, options: {{token_delay_s: 0.001}}}}
  - {{backend: "{KNOWN_ANSWER}", label: b, options: {{token_delay_s: 0.001}}}}
workloads: [{{batch_size: 1, prompt_tokens: 8, new_tokens: 4}}]
tasks: [latency]
repetitions: {{warmup: 0, min: 2, max: 2, processes: 1}}
perplexity: {{text: eval.txt, window: 16, stride: 8}}
timeout_s: 60
"""


def _suite(tmp_path):
    (tmp_path / "eval.txt").write_text("some evaluation text " * 20)
    return write_suite(tmp_path / "suite.yaml", SUITE)


def test_validate_lists_the_cases_of_the_models_given(tmp_path):
    _suite(tmp_path)
    plain = run_bench("validate", "suite.yaml", cwd=tmp_path).stdout
    given = run_bench("validate", "suite.yaml", "--model", "org/mine", "--model", str(tmp_path), cwd=tmp_path,
                      check_exit=None)
    # tmp_path has no config.json: not a model directory, refused with the suite's models line
    assert given.returncode == 2 and "without config.json" in given.stderr and "Traceback" not in given.stderr
    (tmp_path / "mymodel").mkdir()
    (tmp_path / "mymodel" / "config.json").write_text("{}")
    given = run_bench("validate", "suite.yaml", "--model", "org/mine", "--model", "mymodel", cwd=tmp_path).stdout
    assert "2 cases" in plain and ".suite-model." in plain
    assert "4 cases" in given and ".suite-model." not in given
    assert given.count(".mine.") == 2 and given.count(".mymodel.") == 2
    assert "models replaced by --model: org/mine, mymodel" in given


def test_validate_refuses_a_missing_local_model_and_a_model_given_twice(tmp_path):
    _suite(tmp_path)
    missing = run_bench("validate", "suite.yaml", "--model", "./nowhere", cwd=tmp_path, check_exit=2)
    assert "suite.yaml:2: models[0]: ./nowhere does not exist" in missing.stderr
    twice = run_bench("validate", "suite.yaml", "--model", "org/x", "--model", "org/x", cwd=tmp_path, check_exit=2)
    assert "a model is listed twice" in twice.stderr


def test_run_measures_the_models_given_records_that_it_did_and_resumes_with_them(tmp_path):
    _suite(tmp_path)
    run_bench("run", "suite.yaml", "--model", "org/first", "--model", "org/second", "--run-id", "r", cwd=tmp_path)
    run = load_run(tmp_path / "results" / "r")
    assert sorted((r.model, r.variant, r.status) for r in run.records) == [
        ("org/first", "a", "ok"), ("org/first", "b", "ok"), ("org/second", "a", "ok"), ("org/second", "b", "ok")]
    assert {r.model_path for r in run.records} == {"org/first", "org/second"}  # what the backend was handed
    assert run.meta.model_override is not None
    assert run.meta.model_override.models == ["org/first", "org/second"]
    assert run.meta.model_override.suite_models == ["org/suite-model"]
    raw = json.loads((tmp_path / "results" / "r" / "run.json").read_text())
    assert raw["model_override"] == {"models": ["org/first", "org/second"], "suite_models": ["org/suite-model"]}
    report = (tmp_path / "reports" / "r" / "report.md").read_text()
    assert "Models given with `--model`: `org/first`, `org/second`, instead of the suite's `org/suite-model`." in report
    # the snapshot a resume reads holds the models run: resuming neither adds the suite's model nor reruns
    snapshot = (tmp_path / "results" / "r" / "suite.yaml").read_text()
    assert "models replaced by --model org/first --model org/second" in snapshot and "org/suite-model" not in snapshot
    refused = run_bench("run", "--resume", "r", "--model", "org/third", cwd=tmp_path, check_exit=2)
    assert "a resumed run keeps the models it started with" in refused.stderr
    resumed = run_bench("run", "--resume", "r", cwd=tmp_path)
    assert "4 of 4 cases already finished" in resumed.stderr
    assert len(load_run(tmp_path / "results" / "r").records) == 4


def test_a_run_without_model_records_no_override(tmp_path):
    _suite(tmp_path)
    run_bench("run", "suite.yaml", "--run-id", "plain", "--only", "a", cwd=tmp_path)
    run = load_run(tmp_path / "results" / "plain")
    assert run.meta.model_override is None and {r.model for r in run.records} == {"org/suite-model"}
    assert "--model" not in (tmp_path / "reports" / "plain" / "report.md").read_text()


def test_a_hub_id_given_with_model_runs_from_its_snapshot_in_the_hf_cache(tiny_llama, tmp_path, monkeypatch):
    """What the GPU nightly does with its repository variable: a hub id, found in the runner's HF cache (here
    offline: a cache filled by hand), so every backend, converters included, gets a local directory."""
    import shutil

    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--acme--tiny"
    snapshot = repo / "snapshots" / revision
    shutil.copytree(tiny_llama, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    _suite(tmp_path)
    write_suite(tmp_path / "hf.yaml", """
        name: hub
        models: [tiny-llama]
        backends: [{backend: hf-eager, label: hf}]
        workloads: [{batch_size: 1, prompt_tokens: 8, new_tokens: 4}]
        tasks: [latency]
        repetitions: {warmup: 0, min: 2, max: 2, processes: 1}
        """)
    run_bench("run", "hf.yaml", "--model", "acme/tiny", "--run-id", "hub", cwd=tmp_path)
    (record,) = load_run(tmp_path / "results" / "hub").records
    assert record.ok and record.model == "acme/tiny" and record.model_path == str(snapshot)
    assert ".tiny." in record.id  # the case is named after the hub id, whatever the snapshot's revision


def test_every_nightly_run_measures_the_repository_variables_model_else_tiny_llama():
    """The nightly's runs (its shards and the re-measurement that confirms a regression) must run the same model:
    a case id names its model, so a confirmation of another model would match nothing."""
    import yaml

    from tests.conftest import ROOT
    from tests.test_workflows import workflow_commands

    path = ROOT / ".github" / "workflows" / "nightly.yml"
    assert yaml.safe_load(path.read_text())["env"]["BENCH_MODEL"] == \
        "${{ vars.BENCH_NIGHTLY_MODEL || 'tiny-llama' }}"
    runs = [c for c in workflow_commands(path)
            if c.startswith(("python -m bench run suites/nightly.yaml", "python -m bench profile suites/nightly.yaml"))]
    # the shards' run, and the confirm job's re-measurement (a profiled one: bench profile)
    assert len(runs) == 2 and all(c.endswith('--model "$BENCH_MODEL"') for c in runs)
    assert any("--only-from first.json" in c for c in runs)
