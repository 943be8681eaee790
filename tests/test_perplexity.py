"""Perplexity checked against hand-computed values and against a direct cross-entropy; scoring protocols; chunks."""
import itertools
import math

import numpy as np
import pytest
from scipy.special import log_softmax

from bench.measure.perplexity import ScoredRows, perplexity, windows
from bench.suite import SuiteError, load_suite
from tests.conftest import ROOT, write_suite
from tests.known_answer_backend import VOCAB, bigram_logits


@pytest.mark.parametrize("n, window, stride", [(100, 16, 8), (100, 16, 16), (37, 10, 3), (5, 16, 8), (64, 64, 64)])
def test_every_token_after_the_first_is_scored_once_when_stride_is_below_window(n, window, stride):
    scored = [t for _, end, first in windows(n, window, stride) for t in range(first, end)]
    assert len(scored) == len(set(scored))
    for begin, end, first in windows(n, window, stride):
        assert first > begin and end - begin <= window  # every scored token has context inside its window
    if stride < window:
        assert sorted(scored) == list(range(1, n))


def test_bigram_perplexity_matches_the_hand_computed_value():
    ids = [0, 1, 1, 0, 2]
    table = np.array([[0.0, 0.0, 0.0], [math.log(2), 0.0, 0.0], [0.0, 0.0, 0.0]])  # logits[prev, next]
    # p(1|0) = 1/3, p(1|1) = 1/4 (row 1 is [2, 1, 1]/4), p(0|1) = 2/4, p(2|0) = 1/3
    expected = math.exp(-(math.log(1 / 3) + math.log(1 / 4) + math.log(2 / 4) + math.log(1 / 3)) / 4)
    for window, stride in [(5, 1), (2, 1), (3, 2)]:  # a bigram model needs only one token of context
        result = perplexity(lambda w: table[w], ids, window, stride)
        assert result.perplexity == pytest.approx(expected, rel=1e-12)
        assert result.scored_tokens == 4


def test_known_answer_backend_perplexity_has_its_closed_form():
    rng = np.random.default_rng(1)
    ids = rng.integers(0, VOCAB, size=500).tolist()
    logits = bigram_logits()
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    expected = math.exp(-np.mean([logp[a, b] for a, b in itertools.pairwise(ids)]))
    result = perplexity(lambda w: logits[w], ids, 64, 32)
    assert result.perplexity == pytest.approx(expected, rel=1e-12)
    assert result.fed_tokens > result.scored_tokens == 499


@pytest.mark.slow
def test_tiny_llama_full_window_perplexity_equals_direct_cross_entropy(tiny_llama):
    import torch
    from transformers import AutoModelForCausalLM

    from backends.hf.eager import HFEager

    backend = HFEager(HFEager.Options())
    backend.load(tiny_llama)
    ids = backend.tokenize("Return the number of items in a container.\n\nSplit the string at the last occurrence.")
    result = perplexity(backend.token_logits, ids, window=len(ids), stride=len(ids))
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1].double()
    direct = torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:])).item()
    assert result.nll_mean == pytest.approx(direct, rel=1e-6)


def _context_logits(vocab: int = 11):
    """token_logits whose every row depends on the whole window before it (not a bigram): what a protocol changes."""
    def token_logits(window_ids: list[int]) -> np.ndarray:
        prefix = np.cumsum(np.asarray(window_ids, dtype=np.float64))
        return np.sin(np.outer(prefix + np.arange(len(window_ids)), np.arange(1, vocab + 1)) / 7.0) * 3

    return token_logits


def _per_token_nll(ids: list[int], window: int, stride: int, scoring: str, **kwargs) -> dict[int, float]:
    """The NLL of every scored token, by its position in `ids`."""
    spans = list(windows(len(ids), window, stride, scoring))
    nll: dict[int, float] = {}

    def on_rows(chunk: ScoredRows) -> None:
        _, _, first = spans[chunk.window]
        for row, (logprobs, target) in enumerate(zip(chunk.logprobs, chunk.targets)):
            nll[first + chunk.start + row] = -float(logprobs[target])

    perplexity(_context_logits(), ids, window, stride, on_rows=on_rows, scoring=scoring, **kwargs)
    return nll


def test_last_stride_scores_each_windows_last_stride_tokens_while_a_token_follows_the_window():
    # 10 tokens, windows of 4 every 2: [0,4) [2,6) [4,8) score 2-3, 4-5, 6-7; [6,10) is not used (nothing follows it)
    assert list(windows(10, 4, 2, "last-stride")) == [(0, 4, 2), (2, 6, 4), (4, 8, 6)]
    # llama-perplexity's count, ceil((n - window) / stride) windows: with n - window a multiple of the stride the
    # last whole window is dropped too (12 tokens: [8,12) would fit, it is not used)
    assert [first for _, _, first in windows(12, 4, 2, "last-stride")] == [2, 4, 6, 8]
    assert list(windows(11, 4, 3, "last-stride")) == [(0, 4, 1), (3, 7, 4), (6, 10, 7)]
    assert list(windows(4, 4, 2, "last-stride")) == []  # no token after the only window: nothing scored
    ids = np.random.default_rng(3).integers(0, 11, size=64).tolist()
    last = _per_token_nll(ids, 16, 4, "last-stride")
    assert sorted(last) == list(range(12, 60))  # tokens 1-11 and the 4 after the last window are not scored
    every = _per_token_nll(ids, 16, 4, "all")
    assert sorted(every) == list(range(1, 64))
    # on the tokens both score, the same window and the same log-probability, to the bit
    assert {t: every[t] for t in last} == last
    result = perplexity(_context_logits(), ids, 16, 4, scoring="last-stride")
    assert result.scored_tokens == 48 and result.windows == 12 and result.fed_tokens == 12 * 16
    assert result.nll_mean == pytest.approx(sum(last.values()) / 48, rel=1e-12)
    with pytest.raises(ValueError, match="need more than window"):
        perplexity(_context_logits(), ids[:16], 16, 4, scoring="last-stride")


def test_chunks_of_positions_give_the_unchunked_float64_rows_and_stay_within_their_byte_budget():
    vocab, window, stride = 5000, 40, 16
    rng = np.random.default_rng(4)
    table = rng.normal(0, 4, size=(vocab, vocab)).astype(np.float32)  # float32 logits, as backends return them
    ids = rng.integers(0, vocab, size=300).tolist()

    def token_logits(window_ids):
        return table[window_ids]

    chunks: list[ScoredRows] = []
    chunked = perplexity(token_logits, ids, window, stride, on_rows=chunks.append, chunk_bytes=3 * 8 * vocab)
    assert max(c.logprobs.nbytes for c in chunks) <= 3 * 8 * vocab and max(len(c.targets) for c in chunks) == 3
    # the unchunked computation: one float64 log-softmax over each window's scored rows
    expected_nll, offset = 0.0, 0
    for index, (begin, end, first) in enumerate(windows(len(ids), window, stride)):
        whole = log_softmax(table[ids[begin:end]][first - 1 - begin:end - 1 - begin].astype(np.float64), axis=-1)
        parts = [c for c in chunks if c.window == index]
        assert [c.start for c in parts] == list(range(0, end - first, 3)) and parts[-1].last
        np.testing.assert_array_equal(np.concatenate([c.logprobs for c in parts]), whole)  # every row, exactly
        expected_nll -= whole[np.arange(end - first), ids[first:end]].sum()
        offset += end - first
    assert offset == chunked.scored_tokens == 299
    assert chunked.nll_sum == pytest.approx(expected_nll, rel=1e-12)  # only the order of the sums differs
    whole_windows = perplexity(token_logits, ids, window, stride)
    assert chunked.nll_sum == pytest.approx(whole_windows.nll_sum, rel=1e-12)


def test_the_scoring_protocol_is_a_suite_setting_that_leaves_existing_case_ids_alone(tmp_path):
    _, smoke = load_suite(ROOT / "suites" / "smoke.yaml")
    assert {c.perplexity.scoring for c in smoke} == {"all"}
    # the ids a run before the setting existed gave these cases: baselines still match case by case
    assert "hf-eager.tiny-llama.perplexity.a71c42df" in {c.id for c in smoke}
    assert "hf-eager.tiny-llama.b1-p64-n32.18e75974" in {c.id for c in smoke}
    body = "name: s\nmodels: [tiny-llama]\nbackends: [{backend: hf-eager}]\ntasks: [perplexity]\n"
    _, cases = load_suite(write_suite(tmp_path / "s.yaml", body + "perplexity: {scoring: last-stride}\n"))
    assert cases[0].perplexity.scoring == "last-stride" and cases[0].id not in {c.id for c in smoke}
    bad = write_suite(tmp_path / "bad.yaml", body + "perplexity: {window: 64, stride: 64, scoring: last-stride}\n")
    with pytest.raises(SuiteError, match=r"bad.yaml:5: perplexity: .*stride \(64\) must be < window \(64\)"):
        load_suite(bad)
    with pytest.raises(SuiteError, match="perplexity.scoring: .*'all' or 'last-stride'"):
        load_suite(write_suite(tmp_path / "typo.yaml", body + "perplexity: {scoring: last}\n"))
