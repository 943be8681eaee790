"""The HF backends on the real built-in model: correct tokens, agreeing quality, honest descriptions."""
from pathlib import Path

import pytest

from backends.hf.bettertransformer import BetterTransformer
from backends.hf.eager import HFEager
from bench.measure.perplexity import perplexity
from bench.models.corpus import heldout_text

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def loaded(tiny_llama):
    backends = {}
    for cls in (HFEager, BetterTransformer):
        backend = cls(cls.Options(), threads=1)
        backend.load(tiny_llama)
        backends[cls.name] = backend
    return backends


@pytest.fixture(scope="module")
def eval_ids(loaded):
    return loaded["hf-eager"].tokenize(heldout_text())[:2048]


def test_greedy_kv_cache_loop_matches_transformers_generate(loaded, eval_ids):
    import torch

    prompts = [eval_ids[:48], eval_ids[100:148]]
    for backend in loaded.values():
        steps = []
        tokens = backend.generate(prompts, 24, lambda steps=steps: steps.append(1))
        assert len(steps) == 24  # on_token is called once per decode step
        expected = backend.model.generate(torch.tensor(prompts), max_new_tokens=24, min_new_tokens=24,
                                          do_sample=False)[:, 48:].tolist()
        assert tokens == expected


def test_batched_generation_equals_one_sequence_at_a_time(loaded, eval_ids):
    backend = loaded["bettertransformer"]
    prompts = [eval_ids[i: i + 32] for i in (0, 300, 600)]
    batched = backend.generate(prompts, 16, lambda: None)
    assert batched == [backend.generate([p], 16, lambda: None)[0] for p in prompts]


def test_eager_and_sdpa_perplexity_agree_within_1e_4_relative(loaded, eval_ids):
    eager = perplexity(loaded["hf-eager"].token_logits, eval_ids, 256, 128)
    sdpa = perplexity(loaded["bettertransformer"].token_logits, eval_ids, 256, 128)
    assert sdpa.perplexity == pytest.approx(eager.perplexity, rel=1e-4)
    assert eager.scored_tokens == len(eval_ids) - 1
    assert 1 < eager.perplexity < 526  # a trained model: better than the unigram baseline


def test_describe_records_the_mechanism_that_actually_ran(loaded, tiny_llama):
    eager, sdpa = loaded["hf-eager"].describe(), loaded["bettertransformer"].describe()
    assert eager.details["attn_implementation"] == "eager" and sdpa.details["attn_implementation"] == "sdpa"
    assert "BetterTransformer" in sdpa.mechanism and "scaled_dot_product_attention" in sdpa.mechanism
    assert eager.threads == sdpa.threads == 1
    # float32 weights plus the small rotary buffers: within a few KiB of the safetensors file on disk
    on_disk = (Path(tiny_llama) / "model.safetensors").stat().st_size
    assert eager.model_size_bytes >= 4 * eager.n_parameters
    assert abs(eager.model_size_bytes - on_disk) < 16 * 1024
