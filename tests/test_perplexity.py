"""Perplexity checked against hand-computed values and against a direct cross-entropy."""
import itertools
import math

import numpy as np
import pytest

from bench.measure.perplexity import perplexity, windows
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
