"""Latency metrics checked against known answers: injected per-token delays and synthetic stamps."""
import pytest

from bench.core.timing import Clock, make_clock
from bench.measure.latency import derive, measure, prompt_batch
from bench.records.schema import Repetitions
from tests.known_answer_backend import KnownAnswerBackend

POLICY = Repetitions(warmup=1, min=6, max=12, max_time_s=30, ci_target=0.01, ci_level=0.95)


def test_derive_from_hand_made_stamps():
    # two repetitions, 4 tokens: first token at 10 ms, then 2 ms apart (rep 1) or 4 ms apart (rep 2)
    stamps = [[10_000_000, 12_000_000, 14_000_000, 16_000_000], [10_000_000, 14_000_000, 18_000_000, 22_000_000]]
    samples, metrics = derive(stamps, batch_size=2, prompt_tokens=50)
    assert samples.ttft_ms == [10.0, 10.0]
    assert samples.tpot_ms == [2.0, 4.0]
    assert samples.e2e_ms == [16.0, 22.0]
    assert samples.itl_ms == [2.0, 2.0, 2.0, 4.0, 4.0, 4.0]
    assert metrics["prefill_tok_s"] == pytest.approx(2 * 50 * 2 / 0.020)  # 200 prompt tokens in 20 ms
    assert metrics["decode_tok_s"] == pytest.approx(2 * 3 * 2 / 0.018)  # 12 decoded tokens in 6 ms + 12 ms


@pytest.mark.parametrize("delay_s", [0.002, 0.01])
def test_tpot_matches_an_injected_per_token_delay_within_one_percent(delay_s):
    backend = KnownAnswerBackend(KnownAnswerBackend.Options(token_delay_s=delay_s, prefill_delay_s=0.02))
    result = measure(backend, prompt_batch(list(range(100)), 2, 16), 20, POLICY, Clock())
    tpot, ttft = result.metrics["tpot_ms"].median, result.metrics["ttft_ms"].median
    assert tpot == pytest.approx(delay_s * 1e3, rel=0.01)
    assert ttft == pytest.approx(20 + delay_s * 1e3, rel=0.01)  # prefill + the first token step
    # throughput is a ratio of sums (a mean), so preemption outliers on a shared machine move it more
    # than the medians above (-5 % seen with two other test runs on these 2 cores); it must still count the
    # batch: 2 tokens per step (counting one would be -50 %)
    assert result.metrics["decode_tok_s"] == pytest.approx(2 / delay_s, rel=0.08)
    assert len(result.samples.stamps_ns) == result.info.repetitions >= POLICY.min
    assert result.info.stop_reason == "ci_target_met"


def test_repetitions_stop_at_the_cap_when_the_target_is_unreachable():
    backend = KnownAnswerBackend(KnownAnswerBackend.Options(token_delay_s=0.0005))
    policy = POLICY.model_copy(update={"ci_target": 1e-9, "max": 8})
    result = measure(backend, [[1, 2, 3]], 4, policy, Clock())
    assert result.info.repetitions == 8 and result.info.stop_reason == "max_repetitions"


def test_prompts_are_distinct_real_slices_of_the_requested_length():
    ids = list(range(1000))
    batch = prompt_batch(ids, 4, 64)
    assert [len(p) for p in batch] == [64] * 4 and len({p[0] for p in batch}) == 4
    with pytest.raises(ValueError, match="fewer than prompt_tokens"):
        prompt_batch(ids[:10], 1, 64)


def test_cpu_clock_is_selected_for_cpu_devices():
    assert make_clock("cpu").device == "cpu"
    clock = Clock()
    elapsed_ns, value = clock.time_ns(lambda: 42)
    assert value == 42 and elapsed_ns >= 0
