"""Quality against a reference (KL, top-1, paired delta perplexity) and MBU, on known answers.

The end-to-end checks go through the real runner: the reference's perplexity case stores its
log-probabilities in bench's cache (a temporary BENCH_CACHE here) and the other cases read them back
a chunk of positions at a time; the run directory keeps records, samples and logs only.
"""
import gc
import math
import weakref

import numpy as np
import pytest

from bench.measure import bandwidth, quality, refcache
from bench.records.schema import CaseSpec
from tests.conftest import KNOWN_ANSWER, load_records, record_lines, run_bench, write_suite


def test_kl_divergence_matches_the_hand_computed_value():
    p, q = np.array([[0.5, 0.25, 0.25]]), np.array([[0.25, 0.5, 0.25]])
    expected = 0.5 * math.log(0.5 / 0.25) + 0.25 * math.log(0.25 / 0.5) + 0.25 * math.log(1.0)  # = 0.25 ln 2
    assert quality.kl_divergence(np.log(p), np.log(q))[0] == pytest.approx(expected, rel=1e-12)
    assert quality.kl_divergence(np.log(q), np.log(p))[0] == pytest.approx(0.25 * math.log(2), rel=1e-12)
    assert quality.kl_divergence(np.log(p), np.log(p))[0] == 0.0


def test_comparison_known_answers_and_the_reference_against_itself_is_exactly_zero():
    rng = np.random.default_rng(0)
    ref = np.log(rng.dirichlet(np.ones(5), size=40))
    targets = rng.integers(0, 5, size=40)
    same = quality.compare(iter([ref[:20], ref[20:]]), iter([(ref[:20], targets[:20]), (ref[20:], targets[20:])]))
    assert same.kld_mean == same.kld_p99 == same.delta_nll.value == same.delta_ppl.value == 0.0
    assert same.top1_agreement == 1.0 and same.tokens == 40
    # a case whose distribution at one position puts its mass elsewhere: known KL, top-1 and NLL shift
    case = ref.copy()
    case[7] = np.log(np.array([0.96, 0.01, 0.01, 0.01, 0.01]))
    other = quality.compare([ref], [(case, targets)])
    p32 = np.exp(ref[7].astype(np.float32).astype(np.float64))
    p32 /= p32.sum()
    kl7 = float((p32 * (np.log(p32) - np.log([0.96, 0.01, 0.01, 0.01, 0.01]))).sum())
    assert other.kld_mean == pytest.approx(kl7 / 40, rel=1e-5)
    assert other.kld_max == pytest.approx(kl7, rel=1e-5)
    assert other.top1_agreement == (39 + (ref[7].argmax() == 0)) / 40
    d7 = ref[7, targets[7]] - case[7, targets[7]]  # NLL difference at the one changed position
    assert other.delta_nll.value == pytest.approx(d7 / 40, rel=1e-5)
    assert other.delta_ppl.ci_low is None  # one window: nothing to resample, so no interval is claimed


def test_delta_nll_ci_is_a_block_bootstrap_over_windows():
    # four windows of 2 tokens each; the per-window NLL differences are known: 2 ln 2, 0, ln 2.5, 0
    ref = np.log(np.full((2, 2), 0.5))
    windows = [np.log(np.array([[0.25, 0.75], [0.25, 0.75]])), ref, np.log(np.array([[0.8, 0.2], [0.5, 0.5]])), ref]
    targets = [np.array([0, 0]), np.array([0, 0]), np.array([1, 0]), np.array([1, 1])]
    result = quality.compare([ref] * 4, list(zip(windows, targets)))
    sums = np.array([2 * math.log(2), 0.0, math.log(2.5), 0.0])
    assert result.delta_nll.value == pytest.approx(sums.sum() / 8, rel=1e-6)
    assert result.delta_ppl.value == pytest.approx(2 * math.expm1(sums.sum() / 8), rel=1e-6)  # reference PPL is 2
    # every resample is a mean of 4 window means with equal weights: the interval's ends are such means
    low, high = result.delta_nll.ci_low, result.delta_nll.ci_high
    assert 0.0 <= low < result.delta_nll.value < high <= sums.max() / 2
    assert result.delta_nll.method.startswith("block bootstrap over windows")
    expected = quality.block_bootstrap_ci(sums, np.full(4, 2.0))
    assert (low, high) == pytest.approx(expected)
    # correlated tokens: a bootstrap over tokens would be narrower than over whole windows
    tokens = quality.block_bootstrap_ci(np.repeat(sums / 2, 2), np.ones(8))
    assert tokens[1] - tokens[0] < high - low


def test_streaming_holds_one_reference_window_at_a_time():
    """compare() takes iterators and lets each window go before asking for the next."""
    rng = np.random.default_rng(1)
    alive: list[weakref.ref] = []

    def new_window():
        gc.collect()
        assert all(ref() is None for ref in alive), "an earlier window is still held"
        window = np.log(rng.dirichlet(np.ones(8), size=16))
        alive.append(weakref.ref(window))
        return window

    def windows():
        for _ in range(5):
            yield new_window()

    pulled = []
    def case_windows():
        for i in range(5):
            pulled.append(i)
            yield np.log(np.full((16, 8), 1 / 8)), np.zeros(16, dtype=int)

    result = quality.compare(windows(), case_windows())
    assert result.tokens == 80 and pulled == list(range(5))


def test_chunks_of_a_window_give_the_whole_windows_figures_and_the_reference_against_itself_is_exactly_zero():
    rng = np.random.default_rng(2)
    ref = [np.log(rng.dirichlet(np.ones(50), size=30)) for _ in range(3)]
    case = [np.log(rng.dirichlet(np.ones(50) * 5, size=30)) for _ in range(3)]
    targets = [rng.integers(0, 50, size=30) for _ in range(3)]
    whole = quality.compare(ref, list(zip(case, targets)))
    chunked, itself = quality.Comparison(), quality.Comparison()
    for window in range(3):
        for rows in (slice(0, 7), slice(7, 8), slice(8, 30)):
            stored = ref[window][rows].astype(np.float32)  # what the cache holds
            chunked.add_rows(window, stored, case[window][rows], targets[window][rows])
            itself.add_rows(window, stored, ref[window][rows], targets[window][rows])
    chunked_scores, self_scores = chunked.result(), itself.result()
    assert chunked.counts == [30, 30, 30] and chunked_scores.windows == 3
    for name in ("kld_mean", "kld_p99", "kld_max", "top1_agreement"):  # per-token values: exactly the same
        assert getattr(chunked_scores, name) == getattr(whole, name), name
    assert chunked_scores.delta_nll.value == pytest.approx(whole.delta_nll.value, rel=1e-12)
    assert chunked_scores.delta_ppl.ci_low == pytest.approx(whole.delta_ppl.ci_low, rel=1e-12)
    assert self_scores.kld_max == self_scores.delta_nll.value == self_scores.delta_ppl.value == 0.0
    assert self_scores.top1_agreement == 1.0


def test_a_stored_entry_reads_back_chunk_by_chunk_as_the_float32_that_was_written(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path))
    windows = [np.log(np.random.default_rng(i).dirichlet(np.ones(6), size=rows)) for i, rows in enumerate([5, 3])]
    writer = refcache.EntryWriter("k" * 24, {"window": 8})
    for index, window in enumerate(windows):
        writer.start_window(index, len(window), 6)
        writer.write(window[:2])
        writer.write(window[2:])
    assert not refcache.is_complete(refcache.entry_path("k" * 24))  # nothing visible before it is published
    writer.publish({"case_id": "c"})
    assert [p.name for p in (tmp_path / "logprobs").iterdir() if p.name.startswith(".")] == []  # no staging left
    reader = refcache.EntryReader("k" * 24)
    assert reader.meta["rows"] == [5, 3] and reader.meta["parts"] == {"window": 8}
    for index, window in enumerate(windows):
        stored = reader.window(index)
        assert (stored.rows, stored.vocab) == (len(window), 6)
        rows = stored.read(1, 3)
        assert rows.dtype == np.float32
        np.testing.assert_array_equal(rows, window[1:3].astype(np.float32))
        np.testing.assert_array_equal(np.load(stored.path), window.astype(np.float32))  # a plain .npy file
    assert reader.window(2) is None
    reader.close()


def _case(variant: str, task: str, model: str = "m") -> CaseSpec:
    return CaseSpec(id=f"{variant}.{model}.{task}", suite="s", model=model, backend="b", variant=variant,
                    task=task, reference="ref")


def test_the_reference_perplexity_case_is_moved_before_the_others_of_its_model():
    cases = [_case("a", "latency"), _case("a", "perplexity"), _case("ref", "latency"), _case("ref", "perplexity"),
             _case("a", "perplexity", model="n"), _case("ref", "perplexity", model="n")]
    order = [c.id for c in quality.reference_first(cases)]
    assert order == ["a.m.latency", "ref.m.perplexity", "a.m.perplexity", "ref.m.latency",
                     "ref.n.perplexity", "a.n.perplexity"]


def test_mbu_from_known_numbers():
    # 8 GB of weights read in 20 ms per decode step = 400 GB/s; against a 2000 GB/s peak, MBU 0.2
    metrics, not_applicable = bandwidth.mbu(8_000_000_000, 20.0, 2000.0, "stated")
    assert metrics["achieved_bandwidth_gbs"] == pytest.approx(400.0)
    assert metrics["mbu"] == pytest.approx(0.2) and not not_applicable
    metrics, not_applicable = bandwidth.mbu(8_000_000_000, 20.0, None, "peak unknown")
    assert "mbu" not in metrics and not_applicable == {"mbu": "peak unknown"}


def test_peak_bandwidth_comes_from_the_suite_or_the_gpu_table():
    assert bandwidth.peak_bandwidth("cpu", 51.2) == (51.2, "suite peak_memory_bandwidth_gbs")
    peak, reason = bandwidth.peak_bandwidth("cpu", None)
    assert peak is None and "peak_memory_bandwidth_gbs" in reason
    assert bandwidth.gpu_peak_gbs("NVIDIA A100-SXM4-80GB") == 2039
    assert bandwidth.gpu_peak_gbs("NVIDIA H100 80GB HBM3") == 3350
    assert bandwidth.gpu_peak_gbs("Tesla T4") == 320
    assert bandwidth.gpu_peak_gbs("NVIDIA GeForce RTX 4090") == 1008
    assert bandwidth.gpu_peak_gbs("Some Future GPU") is None


KNOWN_ANSWER_QUALITY_SUITE = f"""
name: quality
models: [synthetic]
backends:
  - {{backend: "{KNOWN_ANSWER}", label: base}}
  - {{backend: "{KNOWN_ANSWER}", label: same, options: {{token_delay_s: 0.001}}}}
reference: same
workloads: [{{batch_size: 1, prompt_tokens: 8, new_tokens: 4}}]
tasks: [latency, perplexity]
repetitions: {{warmup: 0, min: 6, max: 6}}
perplexity: {{text: eval.txt, window: 16, stride: 8}}
peak_memory_bandwidth_gbs: 0.001
timeout_s: 60
"""


def _records(tmp_path):
    run_dir = next((tmp_path / "results").iterdir())
    return run_dir, {(r.variant, r.task): r for r in load_records(run_dir)}


def test_quality_and_mbu_through_the_runner_with_the_known_answer_backend(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    (tmp_path / "eval.txt").write_text("some evaluation text for the bigram model " * 10)
    write_suite(tmp_path / "suite.yaml", KNOWN_ANSWER_QUALITY_SUITE)
    run_bench("run", "suite.yaml", cwd=tmp_path)
    run_dir, records = _records(tmp_path)
    order = [f"{r.variant}/{r.task}" for r in record_lines(run_dir)]
    assert order.index("same/perplexity") < order.index("base/perplexity")  # the reference ran first
    for variant in ["base", "same"]:  # the same bigram model: identical distributions
        r = records[(variant, "perplexity")]
        assert r.value("kld_mean") == r.value("kld_p99") == r.value("delta_ppl") == 0.0
        assert r.value("top1_agreement") == 1.0
        assert r.perplexity.quality_tokens == r.perplexity.scored_tokens and r.perplexity.quality_reference == "same"
    # the run directory keeps records, samples and logs; the log-probabilities are one entry of the cache
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock", "cases", "cases.jsonl", "logs", "run.json",
                                                         "samples", "suite.yaml", "tmp"]
    key = records[("same", "perplexity")].perplexity.reference_logprobs
    assert records[("base", "perplexity")].perplexity.reference_logprobs == key
    assert records[("base", "perplexity")].perplexity.reference_recomputed is None
    entry = tmp_path / "cache" / "logprobs" / key
    assert len(list(entry.glob("window-*.npy"))) == records[("same", "perplexity")].perplexity.windows
    # MBU: 512 weight bytes per 1 ms decode step = 5.12e-4 GB/s; the stated peak is 1e-3 GB/s
    latency = records[("same", "latency")]
    expected = 512 / (latency.value("tpot_ms") / 1e3) / 1e9
    assert latency.value("achieved_bandwidth_gbs") == pytest.approx(expected, rel=1e-9)
    assert latency.value("mbu") == pytest.approx(expected / 0.001, rel=1e-9)
    assert latency.value("mbu") < 0.512  # at least the injected 1 ms per token
    assert latency.backend.peak_memory_bandwidth_source == "suite peak_memory_bandwidth_gbs"  # typed, from the runner
    report = (tmp_path / "reports" / run_dir.name / "report.md").read_text()
    assert "KLD mean" in report and "MBU" in report


def test_quality_is_not_applicable_when_the_reference_failed(tmp_path):
    (tmp_path / "eval.txt").write_text("some evaluation text for the bigram model " * 10)
    suite = KNOWN_ANSWER_QUALITY_SUITE.replace("options: {token_delay_s: 0.001}", "options: {fail: raise}")
    write_suite(tmp_path / "suite.yaml", suite.replace("tasks: [latency, perplexity]", "tasks: [perplexity]"))
    run_bench("run", "suite.yaml", cwd=tmp_path, check_exit=3)
    run_dir, records = _records(tmp_path)
    base = records[("base", "perplexity")]
    assert base.ok and "kld_mean" not in base.metrics
    assert base.not_applicable["quality"] == ("the reference variant 'same' perplexity case failed: "
                                              "RuntimeError: injected failure")
    report = (tmp_path / "reports" / run_dir.name / "report.md").read_text()
    assert "base: quality not applicable: the reference variant 'same' perplexity case failed" in report


@pytest.mark.slow
def test_quantized_variants_against_the_fp32_reference_through_the_runner(tmp_path, tiny_llama):
    write_suite(tmp_path / "suite.yaml", """
        name: quant-quality
        models: [tiny-llama]
        backends:
          - {backend: hf-eager, label: int8, options: {quantization: torchao-int8-weight}}
          - {backend: hf-eager, label: fp32}
        reference: fp32
        tasks: [perplexity]
        perplexity: {text: stdlib-heldout, window: 128, stride: 64, max_tokens: 1024}
        timeout_s: 300
    """)
    run_bench("run", "suite.yaml", cwd=tmp_path)
    _, records = _records(tmp_path)
    ref = records[("fp32", "perplexity")]
    assert ref.value("kld_mean") == ref.value("kld_max") == 0.0 and ref.value("top1_agreement") == 1.0
    assert ref.value("delta_ppl") == 0.0
    int8 = records[("int8", "perplexity")]  # nf4 vs int8: tests/test_hf_quant.py, in process
    assert int8.value("kld_mean") > 0 and int8.value("kld_p99") > int8.value("kld_mean")
    assert 0.9 < int8.value("top1_agreement") < 1
    difference = int8.value("perplexity") - ref.value("perplexity")
    assert int8.value("delta_ppl") == pytest.approx(difference, rel=1e-3, abs=1e-3)
    delta = int8.metrics["delta_ppl"]
    assert delta.ci_low <= delta.value <= delta.ci_high
    assert int8.value("model_size_bytes") < ref.value("model_size_bytes") / 2
