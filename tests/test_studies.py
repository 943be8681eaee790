"""Issue 22: attention kernels forced and proven from the profile, GQA KV bytes, batching and prefix options.
Issue 26: studies that compare models measure them in the same interleaved rounds (`interleave: models`)."""
from __future__ import annotations

import dataclasses
import sys
import textwrap

import pytest

from tests.conftest import KNOWN_ANSWER, load_hf


@pytest.fixture(scope="module")
def prompt(tiny_llama):
    from bench.models.corpus import heldout_text

    backend = load_hf(tiny_llama)
    return backend.tokenize(heldout_text())[:40]


@pytest.fixture(scope="module")
def forced(tiny_llama, prompt):
    """hf-eager forced to each CPU kernel (flex is left to the suite: its first call compiles for ~40 s)."""
    out = {}
    for name in ("eager", "sdpa", "sdpa-math", "sdpa-flash"):
        backend = load_hf(tiny_llama, attention=name)
        tokens = backend.generate([prompt, prompt[::-1]], 12, lambda: None)
        out[name] = (tokens, backend.describe().attention, backend.token_logits(prompt))
    return out


def test_each_forced_kernel_is_the_one_the_profiler_saw(forced):
    seen = {name: set(verdict.kernel_ops) for name, (_, verdict, _) in forced.items()}
    assert all(verdict.verified for _, verdict, _ in forced.values()), {n: v for n, (_, v, _) in forced.items()}
    math, flash = "aten::_scaled_dot_product_attention_math", "aten::_scaled_dot_product_flash_attention_for_cpu"
    assert math in seen["sdpa-math"] and flash not in seen["sdpa-math"]
    assert flash in seen["sdpa-flash"] and math not in seen["sdpa-flash"]
    assert not any("scaled_dot_product" in op for op in seen["eager"]) and "aten::_softmax" in seen["eager"]
    assert forced["sdpa"][1].verdict == f"torch chose {flash}"  # unforced: torch 2.13's CPU choice, recorded
    # 2 layers x (one prefill + one decode step): the kernel ran once per layer per forward
    assert forced["sdpa-math"][1].kernel_ops[math] == 4


def test_the_verdict_rejects_a_profile_of_another_kernel(forced):
    from backends.hf.attention import verdict

    math_profile = forced["sdpa-math"][1].kernel_ops
    wrong = verdict("sdpa-flash", "cpu", math_profile)
    assert not wrong.verified and "_scaled_dot_product_attention_math" in wrong.verdict
    assert not verdict("eager", "cpu", math_profile).verified


def test_every_kernel_computes_the_same_model(forced):
    import numpy as np

    tokens, _, logits = forced["eager"]
    for name, (other_tokens, _, other_logits) in forced.items():
        assert other_tokens == tokens, name
        assert np.abs(other_logits - logits).max() < 1e-4, name


@pytest.mark.parametrize("name, why", [("sdpa-efficient", "CUDA implementation only"), ("sdpa-cudnn", "NVIDIA GPU"),
                                       ("flash-attention-2", "CUDA-only")])
def test_a_kernel_this_cpu_lacks_is_skipped_with_its_reason(tiny_llama, name, why):
    from backends.base import NotSupportedHere
    from backends.hf.bettertransformer import BetterTransformer
    from bench.run.worker import failure

    backend = BetterTransformer(BetterTransformer.Options(attention=name))
    with pytest.raises(NotSupportedHere, match=why) as caught:
        backend.load(tiny_llama)
    result = failure(caught.value)
    assert result.status == "skipped" and name in result.reason and "cpu" in result.reason


def test_gqa_kv_bytes_per_token_fall_with_kv_heads_as_computed(tmp_path):
    """The variants' own configs (bench/models/tiny_variants.py), untrained: shapes, not quality (no build)."""
    import torch

    from bench.measure import kvcache
    from bench.models import tiny_llama, tiny_variants

    measured = {}
    for name, extra in (("tiny-llama-kv1", {}), ("tiny-llama-kv2", {}), ("tiny-llama-mha", {}),
                        ("tiny-llama-swa", {"sliding_window": 8})):
        recipe = dataclasses.replace(tiny_variants.recipe(name), **extra)
        config, model_class = tiny_llama.model_config(recipe, eos_id=0)
        torch.manual_seed(0)
        model_class(config).save_pretrained(tmp_path / name)
        backend = load_hf(str(tmp_path / name), attention="sdpa-flash")
        backend.generate([list(range(1, 25))] * 2, 8, lambda: None)
        measured[name] = metrics = kvcache.metrics(str(tmp_path / name), backend.describe())
        assert metrics["kv_cache_bytes_per_token"] == 2 * 2 * recipe.num_kv_heads * (256 // 4) * 4  # float32
    computed = [measured[n]["kv_cache_bytes_per_token"] for n in ("tiny-llama-kv1", "tiny-llama-kv2", "tiny-llama-mha")]
    assert computed == [1024, 2048, 4096]
    for name in ("tiny-llama-kv1", "tiny-llama-kv2", "tiny-llama-mha"):  # a full cache holds what was computed
        assert measured[name]["kv_cache_measured_bytes_per_token"] == measured[name]["kv_cache_bytes_per_token"]
    # a window of 8 over 24 + 8 tokens: the cache keeps about the window, far under the computed full-cache bytes
    swa = measured["tiny-llama-swa"]
    assert swa["kv_cache_measured_bytes_per_token"] < swa["kv_cache_bytes_per_token"] / 2
    assert tiny_variants.recipe("tiny-llama-kv2") == tiny_llama.default_recipe()  # kv2 is tiny-llama itself


def test_shared_prefix_prompts_share_the_prefix_token_for_token(tiny_llama):
    from bench.records.schema import ServingRequest
    from bench.serving.traffic.prompts import Tokenizer
    from bench.serving.traffic.shared_prefix import common_prefix, make_prompts

    tokenizer = Tokenizer(tiny_llama)
    request = ServingRequest(input_tokens=96, output_tokens=8, shared_prefix_tokens=64)
    prompts = make_prompts(request, 8, 0, tokenizer)
    ids = [tokenizer.encode(p.text) for p in prompts]
    assert [len(i) for i in ids] == [p.input_tokens for p in prompts]
    assert all(90 <= p.input_tokens <= 100 for p in prompts)
    shared = min(common_prefix(a, b) for a in ids for b in ids if a is not b)
    assert 64 <= shared < 90  # the whole prefix, token for token, and then each its own suffix
    assert len({tuple(i[shared:]) for i in ids}) == len(ids)
    assert make_prompts(request, 8, 0, tokenizer) == prompts  # seeded


def test_batching_and_prefix_options_reach_the_server_command_line(tiny_llama, monkeypatch):
    from bench.serving.launch import servers

    def command(kind: str, **options) -> list[str]:
        cls = servers.server_class(kind)
        return cls(cls.Options(**options)).prepare(tiny_llama, 8000).command or []

    assert "--continuous-batching" in command("transformers-serve", continuous_batching=True)
    assert "--no-continuous-batching" in command("transformers-serve", continuous_batching=False)
    pytest.importorskip("llama_cpp")
    llama = command("llama-cpp-server", prefix_reuse=False)
    assert llama[llama.index("--prefix-reuse") + 1] == "0"
    assert command("llama-cpp-server")[llama.index("--prefix-reuse") + 1] == "1"
    monkeypatch.setattr(servers, "python_of", lambda interpreter: sys.executable)  # vLLM lives in its own env
    monkeypatch.setattr(servers, "dist_version", lambda python, dist: "0.32.0")
    vllm = command("vllm-server", max_num_seqs=1, prefix_caching=False)
    assert vllm[vllm.index("--max-num-seqs") + 1] == "1" and "--no-enable-prefix-caching" in vllm
    assert "--enable-prefix-caching" in command("vllm-server", prefix_caching=True)
    assert not any("prefix-caching" in arg for arg in command("vllm-server"))  # vLLM's own default


def test_llama_cpp_prefix_reuse_off_evaluates_every_prompt_whole(tiny_llama, monkeypatch):
    llama_cpp = pytest.importorskip("llama_cpp")
    from backends.gguf.convert import gguf_file
    from bench.serving.launch.llama_launch import whole_prompt

    llm = llama_cpp.Llama(str(gguf_file(tiny_llama, "f32")), n_ctx=256, verbose=False)
    evaluated: list[int] = []
    original_eval = llama_cpp.Llama.eval
    monkeypatch.setattr(llama_cpp.Llama, "eval", lambda self, tokens: (evaluated.append(len(tokens)),
                                                                        original_eval(self, tokens))[1])
    prefix, a, b = list(range(10, 60)), list(range(100, 110)), list(range(200, 210))

    def prompt_tokens_evaluated(tokens: list[int]) -> int:
        evaluated.clear()
        next(iter(llm.generate(tokens, temp=0.0)))
        return evaluated[0]
    prompt_tokens_evaluated(prefix + a)
    assert prompt_tokens_evaluated(prefix + b) == len(b)  # llama-cpp-python's default: the shared prefix is kept
    monkeypatch.setattr(llama_cpp.Llama, "generate", whole_prompt(llama_cpp.Llama.generate))
    prompt_tokens_evaluated(prefix + a)
    assert prompt_tokens_evaluated(prefix + b) == len(prefix + b)


def test_vllm_prefix_cache_counters_are_read_from_its_metrics_text():
    from bench.serving.launch.servers import prefix_cache_counters

    text = ("# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.\n"
            "# TYPE vllm:prefix_cache_queries_total counter\n"
            'vllm:prefix_cache_queries_total{engine="0",model_name="m"} 960.0\n'
            'vllm:prefix_cache_hits_total{engine="0",model_name="m"} 704.0\n'
            'vllm:num_requests_running{engine="0",model_name="m"} 0.0\n')
    assert prefix_cache_counters(text) == {"hits": 704.0, "queries": 960.0}
    assert prefix_cache_counters('vllm:num_requests_running{engine="0"} 0.0\n') is None


def test_study_suites_expand_each_variant_on_its_own_models_and_tasks(tmp_path):
    from bench.suite import SuiteError, load_suite
    from tests.conftest import ROOT, write_suite

    _, cases = load_suite(ROOT / "suites" / "attention.yaml")
    kernels = {c.variant for c in cases if c.model == "tiny-llama"}
    assert kernels == {"sdpa-flash", "eager", "sdpa", "sdpa-math", "flex", "sdpa-efficient", "sdpa-cudnn",
                       "flash-attention-2"}
    assert {(c.model, c.variant) for c in cases if c.model != "tiny-llama"} == {
        (m, "sdpa-flash") for m in ("tiny-llama-kv1", "tiny-llama-mha", "tiny-llama-swa")}
    assert all(c.task == "latency" for c in cases if c.variant != "sdpa-flash")
    assert sorted(c.perplexity.window for c in cases if c.task == "perplexity" and c.model == "tiny-llama-swa") == [
        32, 64, 128, 256, 512]
    _, batching = load_suite(ROOT / "suites" / "batching.yaml")
    assert {c.serving.request.shared_prefix_tokens for c in batching if c.task == "serving"} == {448}
    path = write_suite(tmp_path / "s.yaml", """
        name: bad
        models: [tiny-llama]
        backends: [{backend: hf-eager, models: [tiny-llama-kv1]}]
        tasks: [latency]
        """)
    with pytest.raises(SuiteError, match=r"s.yaml.*tiny-llama-kv1.*not among the suite's models"):
        load_suite(path)


def test_prefix_cache_table_pairs_off_and_on_and_gives_the_ttft_speedup_with_its_interval():
    """Known answer: 12 requests per level, TTFT 100 ms (+ jitter) with the cache off, 25 ms with it on -> ~4x."""
    import numpy as np

    from bench.records.schema import (
        CaseRecord,
        CaseSpec,
        LoadLevel,
        RawSamples,
        RequestSample,
        ServingInfo,
        ServingLevel,
        ServingRequest,
        ServingSettings,
    )
    from bench.report import studies
    from bench.report.tables import Entry
    from bench.serving.results.aggregate import level_metrics

    rng = np.random.default_rng(0)
    settings = ServingSettings(request=ServingRequest(input_tokens=96, shared_prefix_tokens=64),
                               levels=[LoadLevel(concurrency=1)])
    entries, raw = [], {}
    for reuse, ttft_ms in ((False, 100.0), (True, 25.0)):
        requests = []
        for i in range(12):
            sent = i * 500_000_000
            first = sent + int((ttft_ms + rng.uniform(-2, 2)) * 1e6)
            chunks = [first + k * 5_000_000 for k in range(8)]
            requests.append(RequestSample(scheduled_ns=sent, sent_ns=sent, chunks_ns=chunks, end_ns=chunks[-1],
                                          input_tokens=96, output_tokens=8))
        metrics, _ = level_metrics(requests, settings.slo, None)
        level = ServingLevel(key="sync", label="closed loop, 1 user", load=LoadLevel(concurrency=1), metrics=metrics)
        label = f"llama-{'reuse' if reuse else 'no-reuse'}"
        case = CaseSpec(id=label, suite="s", model="m", backend="llama-cpp-server", variant=label, task="serving",
                        options={"quant": "f32", "prefix_reuse": reuse}, serving=settings)
        entries.append(Entry("run", CaseRecord(case=case, status="ok", started_at=0, wall_seconds=1,
                                               serving=ServingInfo(server="llama-cpp-server", levels=[level]))))
        raw[label] = RawSamples(serving={"sync": requests})
    table = studies.prefix_cache_table(entries, lambda entry: raw[entry.record.variant])
    assert table is not None and len(table.rows) == 1
    speedup = table.rows[0][5]
    ratio = float(speedup.text.rstrip("x"))
    low, high = (float(x) for x in speedup.interval.strip("[]").split(","))
    assert 3.7 < low <= ratio <= high < 4.3 and ratio == pytest.approx(4.0, rel=0.05)
    assert studies.prefix_cache_table(entries[:1], lambda entry: raw[entry.record.variant]) is None  # no pair


# ---------------------------------------------------------------- issue 26: studies interleave the models they compare

MODELS_SUITE = f"""
name: models
models: [a, b, c]
backends:
  - {{backend: "{KNOWN_ANSWER}", label: ka, options: {{model_token_delay_s: {{a: 0.02, b: 0.04, c: 0.02}}}}}}
reference: ka
interleave: models
reference_model: a
workloads: [{{batch_size: 1, prompt_tokens: 8, new_tokens: 6}}]
tasks: [latency]
repetitions: {{warmup: 1, min: 6, max: 12, max_time_s: 30, ci_target: 0.01, processes: 2}}
perplexity: {{text: eval.txt}}
timeout_s: 120
"""


def _interval(estimate) -> tuple[float, float, float]:
    return estimate.value, estimate.ci_low, estimate.ci_high


def test_interleave_models_plans_one_unit_per_workload_with_every_model_and_keeps_case_ids(tmp_path, monkeypatch):
    from bench.run.cluster.unit_process import read_unit, unit_json
    from bench.run.plan import plan
    from bench.run.shard import shard_cases
    from bench.suite import load_suite
    from tests.conftest import ROOT, write_suite

    body = f"""
        name: plan
        models: [a, b]
        backends:
          - {{backend: "{KNOWN_ANSWER}", label: ref}}
          - {{backend: "{KNOWN_ANSWER}", label: other, options: {{token_delay_s: 0.002}}}}
        reference: ref
        workloads: [{{batch_size: [1, 2], prompt_tokens: 8, new_tokens: 4}}]
        tasks: [latency, perplexity]
        perplexity: {{text: eval.txt, window: 16, stride: 8}}
        """
    (tmp_path / "eval.txt").write_text("evaluation text " * 20)
    monkeypatch.chdir(tmp_path)
    _, by_model = load_suite(write_suite(tmp_path / "variants.yaml", body))
    _, together = load_suite(write_suite(tmp_path / "models.yaml", body + "interleave: models\n"))
    # the option is not part of a case's identity: the same ids, so baselines still match case by case
    assert [c.id for c in together] == [c.id for c in by_model]
    assert all(c.interleave is None and c.reference_model is None for c in by_model)
    assert {(c.interleave, c.reference_model) for c in together if c.task == "latency"} == {("models", "a")}
    assert all(c.interleave is None for c in together if c.task == "perplexity")

    def interleaved(cases):
        return [u for u in plan(cases) if u.kind == "interleaved"]
    assert [{(c.model, c.variant) for c in u.cases} for u in interleaved(by_model)] == [
        {("a", "ref"), ("a", "other")}, {("a", "ref"), ("a", "other")}, {("b", "ref"), ("b", "other")},
        {("b", "ref"), ("b", "other")}]
    units = interleaved(together)  # one unit per workload, every model's variants as its members
    assert len(units) == 2 and [len({c.workload for c in u.cases}) for u in units] == [1, 1]
    assert all({(c.model, c.variant) for c in u.cases} == {(m, v) for m in "ab" for v in ("ref", "other")}
               for u in units)
    assert units[0].label == "4 latency case(s) of 2 models (b1-p8-n4)"
    assert sum(u.kind == "sequential" for u in plan(together)) == 2  # perplexity: per model, as before
    # --shard keeps a unit whole; the Ray executor's unit travels with the new fields
    shards = [{c.id for c in shard_cases(together, i, 2)} for i in (1, 2)]
    assert not shards[0] & shards[1] and shards[0] | shards[1] == {c.id for c in together}
    assert all({c.id for c in u.cases} <= shards[0] or {c.id for c in u.cases} <= shards[1] for u in units)
    assert read_unit(unit_json(units[0])) == units[0]
    # suites/attention.yaml: the shapes and the kernels of its workload in one unit, paired with tiny-llama
    _, attention = load_suite(ROOT / "suites" / "attention.yaml")
    units = interleaved(attention)
    assert len(units) == 1 and len(units[0].cases) == sum(c.task == "latency" for c in attention) == 11
    assert {c.model for c in units[0].cases} == {"tiny-llama", "tiny-llama-kv1", "tiny-llama-mha", "tiny-llama-swa"}
    assert {c.reference_model for c in units[0].cases} == {"tiny-llama"}


@pytest.mark.parametrize("extra, message", [
    ("reference_model: a\n", r"models.yaml:\d+: reference_model: .*needs `interleave: models`"),
    ("interleave: models\nreference_model: z\n",
     r"models.yaml:\d+: reference_model: 'z' is not among the suite's models \(a, b\)"),
    ("interleave: model\n", r"models.yaml:\d+: interleave: .*'variants' or 'models'"),
    ("interleave: models\nreference_model: b\n", r"variant only-a runs on \['a'\] but not on the reference model b"),
])
def test_interleave_models_is_validated_with_file_and_line(tmp_path, extra, message):
    from bench.suite import SuiteError, load_suite
    from tests.conftest import write_suite

    path = write_suite(tmp_path / "models.yaml", textwrap.dedent(f"""
        name: bad
        models: [a, b]
        backends:
          - {{backend: "{KNOWN_ANSWER}", label: ref}}
          - {{backend: "{KNOWN_ANSWER}", label: only-a, models: [a]}}
        tasks: [latency]
        """) + extra)
    with pytest.raises(SuiteError, match=message):
        load_suite(path)


@pytest.fixture(scope="module")
def models_run(tmp_path_factory):
    """The known-answer models study run once through `bench run`: a 20 ms, b 40 ms (2x), c 20 ms (a under
    another name: the A/A pair) per token, all three in the same rounds."""
    from tests.conftest import run_bench, write_suite

    workdir = tmp_path_factory.mktemp("models")
    (workdir / "eval.txt").write_text("text for the known-answer backend " * 20)
    write_suite(workdir / "models.yaml", MODELS_SUITE)
    run_bench("run", "models.yaml", "--run-id", "m", cwd=workdir)
    return workdir


def test_models_in_one_unit_carry_paired_ratios_to_the_reference_model_known_answer(models_run):
    from tests.conftest import record_lines

    records = {r.model: r for r in record_lines(models_run / "results" / "m")}
    assert all(r.ok and r.latency.interleave == "resident" and r.latency.processes == 2 for r in records.values())
    assert "tpot_vs_reference_model" not in records["a"].metrics  # the reference itself
    assert all("tpot_vs_reference" not in r.metrics for r in records.values())  # one variant: no variant ratio
    slower, same = records["b"].metrics["tpot_vs_reference_model"], records["c"].metrics["tpot_vs_reference_model"]
    assert "paired rounds" in slower.method and "ka on a's" in slower.method
    value, low, high = _interval(slower)  # 40 ms over 20 ms per token: ~2, inside its interval, far from 1
    assert value == pytest.approx(2.0, rel=0.1) and low <= value <= high and low > 1.5
    value, low, high = _interval(same)  # the A/A pair: the same delay under two names
    assert low <= 1.0 <= high and value == pytest.approx(1.0, rel=0.1)
    assert records["b"].metrics["ttft_vs_reference_model"].value == pytest.approx(2.0, rel=0.15)


def test_the_report_shows_paired_ratios_and_marks_a_resumed_case_with_both_machine_states(models_run, tmp_path):
    import shutil

    from bench.records import load_run
    from bench.report import studies
    from bench.report.tables import Entry
    from tests.conftest import run_bench

    workdir = tmp_path / "w"
    shutil.copytree(models_run, workdir)
    run_dir = workdir / "results" / "m"
    table = studies.models_table([Entry("m", r) for r in load_run(run_dir).records])
    assert table is not None and table.title.endswith("against a")
    rows = {row[2].text: row for row in table.rows}
    assert rows["a"][6].text == "reference" and rows["b"][6].text.endswith("x") and rows["b"][6].interval
    assert studies.UNPAIRED not in (workdir / "reports" / "m" / "report.md").read_text()
    # b measured again, alone (its record dropped, then --resume): its ratio to a is not from paired rounds
    lines = (run_dir / "cases.jsonl").read_text().splitlines()
    (run_dir / "cases.jsonl").write_text("".join(line + "\n" for line in lines if '"model":"b"' not in line))
    run_bench("run", "--resume", "m", cwd=workdir)
    records = {r.model: r for r in load_run(run_dir).records}
    assert "tpot_vs_reference_model" not in records["b"].metrics and "tpot_vs_reference_model" in records["c"].metrics
    rows = {row[2].text: row for row in studies.models_table([Entry("m", r) for r in records.values()]).rows}
    marked = rows["b"][6]
    assert marked.text.endswith(studies.UNPAIRED) and not marked.interval
    assert float(marked.text.split("x")[0]) == pytest.approx(2.0, rel=0.15)  # the plain ratio of the two medians
    for side in ("not in the same rounds: other processes kept", "; a ka: other processes kept"):
        assert side in marked.detail
    assert marked.detail.count("CPUs busy") == 2 and rows["c"][6].interval  # c kept its paired ratio
    report = (workdir / "reports" / "m" / "report.md").read_text()
    assert f"x {studies.UNPAIRED} (not in the same rounds: " in report and "not measured in the same rounds" in report


def test_the_shape_table_marks_models_measured_apart_and_shows_paired_intervals():
    """Records as an older run of suites/attention.yaml wrote them (each model its own unit), and one paired."""
    from bench.records.schema import CaseRecord, CaseSpec, Estimate, LatencyInfo, MachineState, Summary, Workload
    from bench.report import studies
    from bench.report.tables import Entry

    workload = Workload(batch_size=1, prompt_tokens=128, new_tokens=32)

    def record(model: str, tpot: float, load: float, paired: Estimate | None = None) -> CaseRecord:
        case = CaseSpec(id=model, suite="attention", model=model, backend="hf-eager", variant="sdpa-flash",
                        task="latency", workload=workload, reference="sdpa-flash")
        metrics = {"tpot_ms": Summary(n=10, median=tpot), "kv_cache_bytes_per_token": 2048}
        if paired:
            metrics["tpot_vs_reference_model"] = paired
        machine = MachineState(cpus=2, other_cpu_load_mean=load, other_cpu_load_max=load, contended=load >= 0.5)
        return CaseRecord(case=case, status="ok", started_at=0, wall_seconds=1, metrics=metrics,
                          latency=LatencyInfo(repetitions=10, stop_reason="max_time", measure_seconds=1,
                                              machine=machine))
    entries = [Entry("r", record("tiny-llama", 3.75, 1.62)), Entry("r", record("tiny-llama-mha", 1.32, 0.04)),
               Entry("r", record("tiny-llama-kv1", 1.28, 1.24, Estimate(value=1.02, ci_low=0.97, ci_high=1.08)))]
    table = studies.shape_table(entries)
    assert table is not None
    column = [c.header for c in table.columns].index("TPOT vs tiny-llama")
    cells = {row[0].text: row[column] for row in table.rows}
    assert cells["tiny-llama"].text == "reference"
    assert (cells["tiny-llama-kv1"].text, cells["tiny-llama-kv1"].interval) == ("1.020x", "[0.970, 1.080]")
    mha = cells["tiny-llama-mha"]
    assert mha.text == f"0.352x {studies.UNPAIRED}" and not mha.interval
    assert "kept 0.04 of 2 CPUs busy;" in mha.detail and "tiny-llama sdpa-flash: other processes kept 1.62 of 2 " \
        "CPUs busy (contended)" in mha.detail
    assert any(studies.UNPAIRED_NOTE in note for note in table.notes)


@pytest.mark.slow
def test_a_real_tiny_llama_aa_pair_in_the_same_rounds_gives_a_tpot_ratio_interval_near_1(tmp_path, tiny_llama):
    """tiny-llama-kv2 is tiny-llama's recipe, so the same cached build under another name: an A/A study."""
    from tests.conftest import record_lines, run_bench, write_suite

    write_suite(tmp_path / "aa.yaml", """
        name: aa
        models: [tiny-llama, tiny-llama-kv2]
        backends: [{backend: hf-eager, label: eager}]
        interleave: models
        workloads: [{batch_size: 1, prompt_tokens: 16, new_tokens: 8}]
        tasks: [latency]
        repetitions: {warmup: 1, min: 8, max: 16, max_time_s: 4, ci_target: 0.01, processes: 2}
        """)
    run_bench("run", "aa.yaml", "--run-id", "aa", cwd=tmp_path)
    records = {r.model: r for r in record_lines(tmp_path / "results" / "aa")}
    assert records["tiny-llama"].model_path == records["tiny-llama-kv2"].model_path  # the same model
    value, low, high = _interval(records["tiny-llama-kv2"].metrics["tpot_vs_reference_model"])
    # a 95 % interval misses the true ratio 1 in one A/A run of 20 by design; the margin is the interval's own
    # half-width (1 within two half-widths of the estimate, ~4 standard errors): a real difference between the
    # two, or pairing that failed to cancel drift, still fails it
    half_width = (high - low) / 2
    assert low - half_width <= 1.0 <= high + half_width, (value, low, high)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_models_unit_runs_on_a_ray_node_with_its_paired_ratios(tmp_path, monkeypatch):
    """The Ray executor runs the new unit shape as any unit: one task on one node, every case back to the writer."""
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # a throwaway local cluster: no token auth, on loopback
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    cluster_utils = pytest.importorskip("ray.cluster_utils", reason="ray is not installed: pip install 'bench[ray]'")
    from tests.conftest import record_lines, run_bench, write_suite

    (tmp_path / "eval.txt").write_text("text for the known-answer backend " * 20)
    write_suite(tmp_path / "models.yaml", MODELS_SUITE.replace("min: 6, max: 12", "min: 4, max: 4"))
    cluster = cluster_utils.Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "node_ip_address": "127.0.0.1", "include_dashboard": False})
    try:
        proc = run_bench("run", "models.yaml", "--run-id", "ray", "--executor", "ray", "--address", cluster.address,
                         cwd=tmp_path, timeout=240)
    finally:
        cluster.shutdown()
    assert "1 unit(s)" in proc.stderr
    records = {r.model: r for r in record_lines(tmp_path / "results" / "ray")}
    assert sorted(records) == ["a", "b", "c"] and all(r.ok and r.machine.node for r in records.values())
    assert records["b"].metrics["tpot_vs_reference_model"].value == pytest.approx(2.0, rel=0.1)
    assert "tpot_vs_reference_model" in records["c"].metrics
