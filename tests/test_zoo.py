"""The architecture zoo: every model builds through the real build path and loads, with its real tokenizer.

The builds here use each zoo recipe with 2 training steps and a 256-token held-out evaluation (the
full recipes train 60 steps); everything else (transformers' config class, llama.cpp's vocabulary,
training loop, saving, recording) is the path `python -m bench model build` takes.
"""
from __future__ import annotations

import dataclasses
import json
import math

import pytest

pytest.importorskip("transformers", reason="transformers is not installed: pip install 'bench[hf]'")
pytest.importorskip("gguf", reason="gguf is not installed: pip install 'bench[gguf]'")

from bench.models import MODELS
from bench.models.zoo import ZOO

pytestmark = pytest.mark.slow


def quick(name: str):
    return dataclasses.replace(ZOO[name], steps=2, warmup_steps=1, heldout_tokens=256)


@pytest.fixture(scope="module")
def built() -> dict:
    return {}


def build(name: str, built: dict):
    if name not in built:
        built[name] = quick(name).build(log=lambda _: None)
    return built[name]


def test_every_zoo_model_is_a_builtin_with_a_context():
    assert len(ZOO) >= 8
    for name in ZOO:
        assert MODELS[name].context == 1024 and MODELS[name].recipe() == ZOO[name]


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_model_builds_and_loads_with_its_architecture_and_tokenizer(name, built):
    import numpy as np
    import tokenizers

    from backends.hf.eager import HFEager

    path = build(name, built)
    recipe = ZOO[name]
    info = json.loads((path / "bench_model.json").read_text())
    assert info["model_type"] == recipe.model_type and info["train_steps"] == 2
    assert f"ggml-vocab-{recipe.vocab}.gguf" in info["tokenizer_source"]
    assert math.isfinite(info["heldout_perplexity"]) and info["heldout_tokens"] == 256
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == recipe.model_type and config["vocab_size"] == info["vocab_size"]

    backend = HFEager(HFEager.Options(), threads=1)
    backend.load(str(path))
    text = "Return the sum of a and b."
    ids = backend.tokenize(text)
    assert 3 < len(ids) < len(text)  # a real subword vocabulary, not bytes
    saved = tokenizers.Tokenizer.from_file(str(path / "tokenizer.json"))
    assert saved.decode(ids).strip() == text
    specials = {t.content for t in saved.get_added_tokens_decoder().values() if t.special}
    assert set(recipe.special_tokens) <= specials  # e.g. Phi-3's <s>, </s>, <unk>, which llama.cpp looks up
    logits = backend.token_logits(ids)
    assert logits.shape == (len(ids), config["vocab_size"]) and np.isfinite(logits).all()
    backend.close()


def test_a_build_is_cached_and_a_changed_recipe_is_another_model(built):
    first = build("zoo-gpt2", built)
    assert quick("zoo-gpt2").build(log=pytest.fail) == first  # cached: no log, no build
    other = dataclasses.replace(quick("zoo-gpt2"), seed=1)
    assert other.recipe_hash() != quick("zoo-gpt2").recipe_hash() and not other.is_built()
