"""A corpus of bad suites, each through `validate` and `run`: exit 2, one `error: FILE:LINE: field: ...` line,
no traceback, nothing created, quickly. Then the same for hostile files through the real CLI, and the
gate's own bad inputs.

Each entry is a suite text, a marker (the error's line is the first line containing it) and what the
message must say (the field, or the problem). `{eval}`, `{exe}`, `{noexec}` and `{dir}` are filled in.
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import pytest

from bench.cli import main
from tests.conftest import KNOWN_ANSWER, run_bench

HEAD = "name: bad\nmodels: [synthetic]\nbackends:\n  - backend: hf-eager\n"
WORK = "workloads:\n  - {batch_size: 1, prompt_tokens: 8, new_tokens: 4}\ntasks: [latency]\n"
TEXT = "perplexity: {text: eval.txt}\n"
GOOD = HEAD + WORK + TEXT


def suite(head: str = HEAD, work: str = WORK, text: str = TEXT, tail: str = "") -> str:
    return head + work + text + tail


BOMB = 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n' + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8))

def _ints(n: int) -> str:
    return "[" + ", ".join(map(str, range(1, n + 1))) + "]"


HUGE = (HEAD + f"    options: {{kv_residual_length: {_ints(10_000)}}}\n"  # 10**8 cases in 60 kB
        + WORK.replace("batch_size: 1, prompt_tokens: 8", f"batch_size: {_ints(100)}, prompt_tokens: {_ints(100)}")
        + TEXT)
HUGE_SAYS = ("backends[0]: the suite expands to 100,000,000 cases, more than the limit of 100,000: 1 model x 10,000 "
             "values of options.kv_residual_length x 10,000 latency workload points (workloads[0]: 100 batch_size x "
             "100 prompt_tokens) = 100,000,000 cases; shorten these lists or split the suite, or raise the limit with "
             "--max-cases N")
WIDE = HEAD + WORK.replace("batch_size: 1, prompt_tokens: 8, new_tokens: 4",
                           f"batch_size: {_ints(1000)}, prompt_tokens: {_ints(1000)}, new_tokens: [2, 3]") + TEXT

SERVING = "name: bad\nmodels: [synthetic]\nservers:\n  - {server: stub}\ntasks: [serving]\n"

CORPUS: list[tuple[str, str, str, str]] = [
    # id, suite text, marker of the line the error names, what the message says
    # -- the YAML itself
    ("recursive anchor", GOOD + "a: &a [*a]\n", "&a [*a]", "recursive"),
    ("billion laughs", GOOD + BOMB, "f: &f", "more than 100000 nodes"),
    ("deep nesting", GOOD + "x: " + "[" * 200 + "]" * 200 + "\n", "x: [[[", "nested deeper than"),
    ("block nesting", GOOD + "x:\n" + "".join("  " * i + "- \n" for i in range(1, 60)), "  " * 32 + "- ",
     "nested deeper than"),
    ("duplicate top-level key", GOOD + "name: again\n", "name: again", "duplicate key 'name'"),
    ("duplicate nested key", HEAD + "    label: a\n    label: b\n" + WORK + TEXT, "label: b", "duplicate key 'label'"),
    ("python tag", GOOD + "x: !!python/object/apply:os.system [echo]\n", "!!python", "YAML syntax error"),
    ("unclosed bracket", "name: bad\nmodels: [synthetic\ntasks: [latency]\n", "tasks", "YAML syntax error"),
    ("tab indentation", "name: bad\nbackends:\n\t- backend: hf-eager\n", "\t-", "YAML syntax error"),
    ("two documents", GOOD + "---\nname: other\n", "---", "YAML syntax error"),
    ("empty file", "", "", "a suite is a YAML mapping"),
    ("a list", "- name: bad\n", "- name", "a suite is a YAML mapping"),
    ("a scalar", "just text\n", "just", "a suite is a YAML mapping"),
    # -- name
    ("no name", GOOD.replace("name: bad\n", ""), "", "name: required field is missing"),
    ("empty name", GOOD.replace("name: bad", 'name: ""'), "name:", "name: String should match pattern"),
    ("name with a slash", GOOD.replace("name: bad", "name: a/b"), "name:", "name: String should match pattern"),
    ("name ..", GOOD.replace("name: bad", "name: .."), "name:", "name: String should match pattern"),
    ("absolute name", GOOD.replace("name: bad", "name: /tmp/somewhere"), "name:", "name: String should match"),
    ("name not a string", GOOD.replace("name: bad", "name: 5"), "name:", "name: Input should be a valid string"),
    ("description not a string", GOOD + "description: 5\n", "description", "description: Input should be a valid"),
    ("unknown top-level field", GOOD + "modles: [x]\n", "modles", "unknown field 'modles'; valid fields: name"),
    # -- models
    ("no models", GOOD.replace("models: [synthetic]\n", ""), "", "models: required field is missing"),
    ("empty models", GOOD.replace("[synthetic]", "[]"), "models:", "models: List should have at least 1 item"),
    ("empty model name", GOOD.replace("[synthetic]", '[""]'), "models:", "models: an empty model name"),
    ("model twice", GOOD.replace("[synthetic]", "[a, a]"), "models:", "models: a model is listed twice"),
    ("missing local model", GOOD.replace("[synthetic]", "[./no/such/model]"), "models:", "models[0]: ./no/such"),
    ("missing absolute model", GOOD.replace("[synthetic]", "[/no/such/dir]"), "models:", "does not exist"),
    ("a directory that is no model", GOOD.replace("[synthetic]", "[{dir}]"), "models:", "without config.json"),
    ("model not a string", GOOD.replace("[synthetic]", "[42]"), "models:", "models[0]: Input should be a valid"),
    ("model name not a hub id", GOOD.replace("[synthetic]", '["a b c"]'), "models:", "does not exist"),
    # -- backends
    ("no backends", "name: bad\nmodels: [x]\n" + WORK + TEXT, "", "backends: give backends (latency, perplexity) or"),
    ("empty backends", "name: bad\nmodels: [x]\nbackends: []\n" + WORK + TEXT, "backends:", "give backends"),
    ("servers without the serving task", GOOD + "servers: [{server: stub}]\n", "servers", "'serving' is not in"),
    ("serving without servers", suite(work=WORK.replace("[latency]", "[latency, serving]")), "tasks:",
     "the serving task needs servers"),
    ("unknown backend", GOOD.replace("hf-eager", "hf-eagr"), "hf-eagr", "backends[0].backend: unknown backend"),
    ("module:function backend", GOOD.replace("hf-eager", '"os:system"'), "os:system", "is not a backend"),
    ("module that does not import", GOOD.replace("hf-eager", '"no_such_module:X"'), "no_such", "cannot be imported"),
    ("unknown option", HEAD + "    options: {flash: true}\n" + WORK + TEXT, "flash", "unknown field 'flash'"),
    ("bad option value", HEAD + "    options: {dtype: float64}\n" + WORK + TEXT, "dtype", "options.dtype"),
    ("empty option list", HEAD + "    options: {dtype: []}\n" + WORK + TEXT, "dtype", "empty list"),
    ("option of the wrong type", HEAD + "    options: {compile: 1}\n" + WORK + TEXT, "compile", "options.compile"),
    ("two variants, one label", HEAD + "    label: x\n  - {backend: bettertransformer, label: x}\n" + WORK + TEXT,
     "label: x}", "backends[1]: its label 'x' is also that of backends[0]"),
    ("two variants, one default label", HEAD + "  - backend: hf-eager\n" + WORK + TEXT,
     "  - backend: hf-eager\nworkloads", "its label 'hf-eager' is also"),
    ("empty label", HEAD + '    label: ""\n' + WORK + TEXT, "label:", "backends[0].label: an empty label"),
    ("unknown env", HEAD + "    interpreter: env:nope\n" + WORK + TEXT, "interpreter", "unknown environment"),
    ("interpreter not executable", HEAD + "    interpreter: {noexec}\n" + WORK + TEXT, "interpreter",
     "is not an executable file"),
    ("interpreter a directory", HEAD + "    interpreter: {dir}\n" + WORK + TEXT, "interpreter", "not an executable"),
    ("variant profile field", HEAD + "    profile: {stepz: 2}\n" + WORK + TEXT, "stepz", "unknown field 'stepz'"),
    ("backend entry not a mapping", "name: bad\nmodels: [x]\nbackends: [hf-eager]\n" + WORK + TEXT, "backends:",
     "backends[0]: Input should be a valid dictionary"),
    # -- workloads
    ("empty workloads", suite(work="workloads: []\ntasks: [latency]\n"), "workloads:", "at least 1 item"),
    ("batch_size: true", suite(work=WORK.replace("batch_size: 1", "batch_size: true")), "batch_size",
     "workloads[0].batch_size"),
    ("batch_size 0", suite(work=WORK.replace("batch_size: 1", "batch_size: 0")), "batch_size", "from 1 to 4096"),
    ("batch_size huge", suite(work=WORK.replace("batch_size: 1", "batch_size: 1000000000")), "batch_size",
     "from 1 to 4096"),
    ("prompt_tokens a string", suite(work=WORK.replace("prompt_tokens: 8", 'prompt_tokens: "8"')), "prompt_tokens",
     "workloads[0].prompt_tokens"),
    ("prompt_tokens a float", suite(work=WORK.replace("prompt_tokens: 8", "prompt_tokens: 8.5")), "prompt_tokens",
     "workloads[0].prompt_tokens"),
    ("new_tokens 1", suite(work=WORK.replace("new_tokens: 4", "new_tokens: 1")), "new_tokens", "from 2 to"),
    ("empty batch list", suite(work=WORK.replace("batch_size: 1", "batch_size: []")), "batch_size", "non-empty list"),
    ("repeated batch", suite(work=WORK.replace("batch_size: 1", "batch_size: [1, 1]")), "batch_size", "twice"),
    ("unknown workload field", suite(work=WORK.replace("new_tokens", "new_tokns")), "new_tokns", "unknown field"),
    ("longer than the model's context", suite(head=HEAD.replace("[synthetic]", "[tiny-llama]"),
                                              work=WORK.replace("prompt_tokens: 8", "prompt_tokens: 1022")),
     "prompt_tokens", "exceed the 1024-token context of tiny-llama"),
    # -- tasks
    ("empty tasks", suite(work=WORK.replace("tasks: [latency]", "tasks: []")), "tasks:", "at least 1 item"),
    ("unknown task", suite(work=WORK.replace("[latency]", "[latency, speed]")), "tasks:", "tasks[1]"),
    ("task twice", suite(work=WORK.replace("[latency]", "[latency, latency]")), "tasks:", "listed twice"),
    # -- repetitions
    ("max below min", GOOD + "repetitions: {min: 10, max: 5}\n", "repetitions", "max (5) must be >= min (10)"),
    ("ci_target 0", GOOD + "repetitions: {ci_target: 0}\n", "repetitions", "repetitions.ci_target"),
    ("negative warmup", GOOD + "repetitions: {warmup: -1}\n", "repetitions", "repetitions.warmup"),
    ("infinite max_time_s", GOOD + "repetitions: {max_time_s: .inf}\n", "repetitions", "repetitions.max_time_s"),
    ("ci_level above 1", GOOD + "repetitions: {ci_level: 1.5}\n", "repetitions", "repetitions.ci_level"),
    ("unknown repetitions field", GOOD + "repetitions: {maximum: 5}\n", "repetitions", "unknown field 'maximum'"),
    # -- perplexity
    ("window 1", GOOD.replace("{text: eval.txt}", "{text: eval.txt, window: 1}"), "perplexity", "perplexity.window"),
    ("stride above window", GOOD.replace("{text: eval.txt}", "{text: eval.txt, window: 8, stride: 16}"),
     "perplexity", "stride (16) must be <= window (8)"),
    ("missing text file", GOOD.replace("eval.txt", "no-such.txt"), "perplexity", "perplexity.text: no-such.txt"),
    ("empty text file", GOOD.replace("eval.txt", "empty.txt"), "perplexity", "is empty"),
    ("binary text file", GOOD.replace("eval.txt", "binary.txt"), "perplexity", "is not UTF-8 text"),
    ("window beyond the context", suite(head=HEAD.replace("[synthetic]", "[tiny-llama]"),
                                        work=WORK.replace("[latency]", "[perplexity]"),
                                        text="perplexity: {text: eval.txt, window: 4096, stride: 128}\n"),
     "perplexity: {", "perplexity.window: a window of 4096 tokens exceeds"),
    ("max_tokens 1", GOOD.replace("{text: eval.txt}", "{text: eval.txt, max_tokens: 1}"), "perplexity",
     "perplexity.max_tokens"),
    # -- threads, timeout, reference, bandwidth
    ("threads 0", GOOD + "threads: 0\n", "threads", "threads: Input should be greater than or equal to 1"),
    ("threads true", GOOD + "threads: true\n", "threads", "threads: Input should be a valid integer"),
    ("threads beyond the machine", GOOD + f"threads: {min(1024, (os.cpu_count() or 1) + 1)}\n", "threads",
     "CPU(s)"),
    ("infinite timeout", GOOD + "timeout_s: .inf\n", "timeout_s", "timeout_s: Input should be a finite number"),
    ("zero timeout", GOOD + "timeout_s: 0\n", "timeout_s", "timeout_s: Input should be greater than 0"),
    ("unknown reference", GOOD + "reference: nope\n", "reference", "reference: 'nope' is not a variant"),
    ("negative bandwidth", GOOD + "peak_memory_bandwidth_gbs: -1\n", "peak_memory", "peak_memory_bandwidth_gbs"),
    # -- regression
    ("infinite threshold", GOOD + "regression: {threshold: .inf}\n", "regression", "regression.threshold"),
    ("zero threshold", GOOD + "regression: {threshold: 0}\n", "regression", "regression.threshold"),
    ("unknown regression metric", GOOD + "regression: {metrics: {speed: 0.1}}\n", "regression",
     "unknown metric speed"),
    ("negative metric threshold", GOOD + "regression: {metrics: {ttft_ms: -0.1}}\n", "regression",
     "thresholds must be > 0"),
    ("infinite case threshold", GOOD + "regression: {cases: {x: .inf}}\n", "regression", "regression.cases.x"),
    ("unknown regression field", GOOD + "regression: {threshhold: 0.1}\n", "regression", "unknown field"),
    # -- bounds and references the schema alone did not see (issue 19)
    ("threshold of a million", GOOD + "regression: {threshold: 1000000}\n", "regression", "must be < 10"),
    ("case threshold of 10", GOOD + "regression: {cases: {hf-eager: 10}}\n", "regression", "< 10"),
    ("threshold for no case", GOOD + "regression: {cases: {no-such-case: 0.1}}\n", "regression",
     "regression.cases.no-such-case: 'no-such-case' is neither a case id nor a variant label"),
    ("a thousand processes", GOOD + "repetitions: {processes: 1000}\n", "repetitions",
     "repetitions.processes: at most 64"),
    ("max of 10**35", GOOD + "repetitions: {max: " + "1" + "0" * 35 + "}\n", "repetitions", "repetitions.max: at most"),
    ("max_time_s of 1e9", GOOD + "repetitions: {max_time_s: 1000000000.0}\n", "repetitions",
     "repetitions.max_time_s: at most"),
    ("label with ..", HEAD + "    label: ../../x\n" + WORK + TEXT, "label:", "a label may not contain"),
    ("label with a slash", HEAD + "    label: a/b\n" + WORK + TEXT, "label:", "a label may not contain"),
    ("a plain file as the model", GOOD.replace("[synthetic]", "[{eval}]"), "models:", "is a file but not a model"),
    ("a model dir with a broken config.json", GOOD.replace("[synthetic]", "[./brokenmodel]"), "models:",
     "config.json that is not JSON"),
    ("a model dir whose config.json is a list", GOOD.replace("[synthetic]", "[./listmodel]"), "models:",
     "not a JSON object"),
    ("prompts_file missing", SERVING + "serving: {levels: [{concurrency: 1}], request: {prompts_file: no.jsonl}}\n",
     "serving:", "serving.request.prompts_file: no.jsonl: no such file"),
    ("prompts_file /dev/zero", SERVING + "serving: {levels: [{concurrency: 1}], request: {prompts_file: /dev/zero}}\n",
     "serving:", "/dev/zero: not a regular file"),
    ("prompts_file not UTF-8", SERVING + "serving: {levels: [{concurrency: 1}], request: {prompts_file: binary.txt}}"
     "\n", "serving:", "binary.txt: not UTF-8"),
    ("prompts_file with a bad line", SERVING + "serving: {levels: [{concurrency: 1}], request: {prompts_file: "
     "prompts.jsonl}}\n", "serving:", "prompts.jsonl:2: each line must be a JSON object"),
    # -- what bench reads from a model's config.json, and a suite too big to expand (issue 28)
    ("max_position_embeddings a string", GOOD.replace("[synthetic]", "[./abcmodel]"), "models:",
     'abcmodel/config.json: max_position_embeddings: "abc" is not a positive integer'),
    ("max_position_embeddings true", GOOD.replace("[synthetic]", "[./boolmodel]"), "models:",
     "boolmodel/config.json: max_position_embeddings: true is not a positive integer"),
    ("a KV head count of 0", GOOD.replace("[synthetic]", "[./kvmodel]"), "models:",
     "kvmodel/config.json: text_config.num_key_value_heads: 0 is not a positive integer"),
    ("text_config a list", GOOD.replace("[synthetic]", "[./textmodel]"), "models:",
     "textmodel/config.json: text_config must be a JSON object"),
    ("a suite of 10**8 cases", HUGE, "  - backend: hf-eager", HUGE_SAYS),
    ("workload lists past the limit", WIDE, "  - backend: hf-eager",
     "2,000,000 latency workload points (workloads[0]: 1,000 batch_size x 1,000 prompt_tokens x 2 new_tokens)"),
    # -- profile
    ("profile steps 0", GOOD + "profile: {enabled: true, steps: 0}\n", "profile", "profile.steps"),
    ("profile budget 0", GOOD + "profile: {max_trace_mb: 0}\n", "profile", "profile.max_trace_mb"),
    ("profile enabled: 1", GOOD + "profile: {enabled: 1}\n", "profile", "profile.enabled"),
]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    (tmp_path / "eval.txt").write_text("some evaluation text for the known-answer model " * 20)
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "binary.txt").write_bytes(b"\x00\xff\xfe\x80 not text " * 50)
    (tmp_path / "noexec").write_text("#!/bin/sh\n")
    (tmp_path / "adir").mkdir()
    (tmp_path / "brokenmodel").mkdir()
    (tmp_path / "brokenmodel" / "config.json").write_text("{not json")
    (tmp_path / "listmodel").mkdir()
    (tmp_path / "listmodel" / "config.json").write_text("[1, 2]")
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "hello"}\n{"prompt": 5}\n')
    for name, config in (("abcmodel", {"max_position_embeddings": "abc"}), ("boolmodel", {"max_position_embeddings":
                         True}), ("kvmodel", {"text_config": {"num_key_value_heads": 0}}), ("textmodel",
                         {"text_config": [1]})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({"num_hidden_layers": 2, **config}))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _write(workdir: Path, text: str) -> Path:
    path = workdir / "bad.yaml"
    text = (text.replace("{eval}", "eval.txt").replace("{noexec}", str(workdir / "noexec"))
            .replace("{dir}", str(workdir / "adir")))
    path.write_text(text)
    return path


def _expected_line(path: Path, marker: str) -> int:
    lines = path.read_text().splitlines()
    return next((i + 1 for i, line in enumerate(lines) if marker and marker.split("\n")[0] in line), 1) \
        if "\n" not in marker else path.read_text().split(marker)[0].count("\n") + 1


def test_the_corpus_covers_every_section_of_the_schema():
    assert len(CORPUS) >= 60 and len({name for name, *_ in CORPUS}) == len(CORPUS)
    for section in ("name", "models", "backends", "workloads", "tasks", "repetitions", "perplexity", "threads",
                    "timeout_s", "reference", "regression", "profile", "peak_memory_bandwidth_gbs", "description"):
        assert any(section in text for _, text, *_ in CORPUS), section


@pytest.mark.parametrize("name, text, marker, says", CORPUS, ids=[c[0] for c in CORPUS])
@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_bad_suite_is_one_clear_error_and_nothing_is_created(workdir, capsys, command, name, text, marker, says):
    path = _write(workdir, text)
    args = [command, str(path)] + (["--results-dir", "out/results", "--reports-dir", "out/reports"]
                                   if command == "run" else [])
    started = time.perf_counter()
    code = main(args)
    elapsed = time.perf_counter() - started
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert "Traceback" not in err and out == ""
    line = _expected_line(path, marker)
    assert re.fullmatch(rf"error: {re.escape(str(path))}:{line}: .+\n", err), (line, err)
    assert says in err, err
    assert not (workdir / "out").exists()  # nothing created: no run directory, no report
    assert elapsed < 1.0  # the validator's own time (no interpreter start-up): a bad suite fails at once


def _special_files(workdir: Path) -> dict[str, Path]:
    fifo = workdir / "fifo.yaml"
    os.mkfifo(fifo)
    big = workdir / "big.yaml"
    big.write_bytes(b"#" * 2_000_000 + b"\n")
    binary = workdir / "binary.yaml"
    binary.write_bytes(b"name: bad\n\xff\xfe\x00\n")
    bomb = workdir / "bomb.yaml"
    bomb.write_text(GOOD + BOMB)
    return {"a FIFO": fifo, "/dev/zero": Path("/dev/zero"), "a directory": workdir / "adir", "2 MB": big,
            "non-UTF-8 bytes": binary, "an alias bomb": bomb, "a missing file": workdir / "missing.yaml"}


def test_hostile_files_through_the_real_cli_fail_fast_without_a_traceback(workdir):
    for what, path in _special_files(workdir).items():
        for command in ("validate", "run"):
            started = time.monotonic()
            proc = run_bench(command, str(path), cwd=workdir, timeout=30, check_exit=None)
            assert proc.returncode == 2, (what, command, proc.stderr)
            assert proc.stderr.startswith(f"error: {path}") and "Traceback" not in proc.stderr, (what, proc.stderr)
            assert time.monotonic() - started < 10, what  # includes the interpreter's start-up
    assert not (workdir / "results").exists() and not (workdir / "reports").exists()


@pytest.mark.parametrize("run_id", ["../../escape", "/tmp/absolute", "a/b", "..", ""])
def test_a_run_id_that_is_not_a_plain_name_is_refused_before_anything_is_written(workdir, run_id):
    (workdir / "s.yaml").write_text(f"name: ok\nmodels: [x]\nbackends: [{{backend: '{KNOWN_ANSWER}'}}]\n"
                                    f"perplexity: {{text: eval.txt}}\n")
    proc = run_bench("run", "s.yaml", "--run-id", run_id, cwd=workdir, check_exit=2)
    assert "--run-id" in proc.stderr and "Traceback" not in proc.stderr
    assert not (workdir / "results").exists() and not Path("/tmp/absolute").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere: an unwritable directory needs another user")
def test_an_unwritable_results_directory_is_bad_input(workdir):
    (workdir / "s.yaml").write_text(f"name: ok\nmodels: [x]\nbackends: [{{backend: '{KNOWN_ANSWER}'}}]\n"
                                    f"perplexity: {{text: eval.txt}}\n")
    (workdir / "locked").mkdir(mode=0o500)
    proc = run_bench("run", "s.yaml", "--results-dir", "locked/results", cwd=workdir, check_exit=2)
    assert "cannot write" in proc.stderr and "Traceback" not in proc.stderr


def test_unwritable_paths_are_bad_input_even_as_root(workdir):
    """A path under a regular file cannot be created by anyone."""
    (workdir / "s.yaml").write_text(f"name: ok\nmodels: [x]\nbackends: [{{backend: '{KNOWN_ANSWER}'}}]\n"
                                    f"perplexity: {{text: eval.txt}}\n")
    (workdir / "afile").write_text("")
    for flag in ("--results-dir", "--reports-dir"):
        proc = run_bench("run", "s.yaml", flag, "afile/sub", cwd=workdir, check_exit=2)
        assert "cannot write" in proc.stderr and "Traceback" not in proc.stderr
    assert not (workdir / "results").exists()


@pytest.mark.parametrize("flags", [["--threshold", "nan"], ["--threshold", "inf"], ["--threshold", "-1"],
                                   ["--threshold", "0"], ["--alpha", "nan"], ["--alpha", "0"], ["--alpha", "-1"],
                                   ["--alpha", "1"], ["--threshold", "five"]])
def test_the_gate_refuses_settings_that_would_switch_it_off(workdir, flags):
    proc = run_bench("compare", "a", "b", *flags, cwd=workdir, check_exit=2)
    assert flags[0] in proc.stderr and "Traceback" not in proc.stderr


def test_a_crash_inside_bench_is_never_a_verdict(workdir):
    """An internal error exits 70 with its traceback: CI must not read a crash as 'regression' (1) or 'ok' (0)."""
    code = ("import sys\nfrom bench.cli import main\nimport bench.gate.compare as c\n"
            "def boom(*a, **k):\n    raise ZeroDivisionError('injected')\n"
            "c.compare_runs = boom\nsys.exit(main(sys.argv[1:]))\n")
    fixture = Path(__file__).parent / "data" / "runs" / "v1-fixture"
    import subprocess

    proc = subprocess.run([sys.executable, "-c", code, "compare", str(fixture), str(fixture)], cwd=workdir,
                          capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    assert proc.returncode == 70, proc.stderr
    assert "ZeroDivisionError: injected" in proc.stderr and "internal error in bench" in proc.stderr


def test_max_cases_is_a_limit_the_user_can_raise(workdir):
    """`--max-cases N` on validate and run: a suite of more cases is exit 2 naming the count, before anything is
    expanded or written; at the count it runs as before."""
    from bench.suite import MAX_CASES

    two = suite(work=WORK.replace("batch_size: 1", "batch_size: [1, 2]"))
    path = _write(workdir, two)
    for command in ("validate", "run"):
        extra = ["--results-dir", "out/results", "--reports-dir", "out/reports"] if command == "run" else []
        proc = run_bench(command, str(path), "--max-cases", "1", *extra, cwd=workdir, check_exit=2)
        assert f"{path}:4: backends[0]: the suite expands to 2 cases, more than the limit of 1: 1 model x 2 latency " \
               f"workload points (workloads[0]: 2 batch_size)" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr and not (workdir / "out").exists()
    proc = run_bench("validate", str(path), "--max-cases", "2", cwd=workdir)
    assert "is valid: 2 cases" in proc.stdout
    for bad in ("0", "-3", "many"):
        proc = run_bench("validate", str(path), "--max-cases", bad, cwd=workdir, check_exit=2)
        assert "--max-cases" in proc.stderr and "at least 1" in proc.stderr
    assert f"default: {MAX_CASES:,}" in run_bench("validate", "--help", cwd=workdir).stdout


COUNTED = [  # suites whose expansion the arithmetic count must match case for case
    (HEAD.replace("[synthetic]", "[synthetic, m2]")
     + "    options: {dtype: [float32, bfloat16], compile: [true, false]}\n"
     + "  - {backend: bettertransformer, models: [m2], tasks: [perplexity]}\n"
     + WORK.replace("[latency]", "[latency, perplexity]").replace("batch_size: 1", "batch_size: [1, 2, 4]")
     + "perplexity: {text: eval.txt, window: [16, 32], stride: 8}\n"),
    (HEAD.replace("[synthetic]", "[synthetic, m2]") + "  - {backend: bettertransformer, tasks: [latency]}\n"
     + "workloads:\n  - {batch_size: [1, 2], prompt_tokens: [8, 16], new_tokens: 4}\n"
     + "  - {batch_size: 3, prompt_tokens: 8}\ntasks: [latency, perplexity]\n" + TEXT),
    ("name: s\nmodels: [a, b]\nservers:\n  - {server: stub, options: {extra_args: [[--a], [--b, '2']]}}\n"
     + "  - {server: stub, label: flat, options: {extra_args: [--c, '3']}}\ntasks: [serving]\n"
     + "serving: {levels: [{concurrency: 1}]}\n"),
]


@pytest.mark.parametrize("text", COUNTED)
def test_the_count_is_the_expansion(workdir, text):
    from bench.suite import load_suite
    from bench.suite.expand import count_cases

    path = _write(workdir, text)
    suite_, cases = load_suite(path)
    assert sum(c.cases for c in count_cases(suite_)) == len(cases) > 1


def test_every_shipped_suite_is_counted_exactly():
    from bench.suite import load_suite
    from bench.suite.expand import count_cases

    for path in sorted((Path(__file__).parent.parent / "suites").glob("*.yaml")):
        suite_, cases = load_suite(path)
        assert sum(c.cases for c in count_cases(suite_)) == len(cases), path
