"""What a converter or runtime cannot do for an architecture is a skip with its reason, and what it can do is right.

Each check runs the real library on a zoo model (2 training steps; bench/models/zoo.py): onnxruntime-genai's
model builder on Gemma 3 and OLMo 2, onnxruntime-genai's generator on Mistral's sliding window, llama.cpp on
a model named Phi-3. The OpenVINO check reads optimum-intel's own message (its side environment is not built
in the tests).
"""
from __future__ import annotations

import dataclasses
import types
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers", reason="transformers is not installed: pip install 'bench[hf]'")
pytest.importorskip("gguf", reason="gguf is not installed: pip install 'bench[gguf]'")

from backends.base import NotSupportedHere
from bench.models.corpus import heldout_text
from bench.models.zoo import ZOO

pytestmark = pytest.mark.slow


def quick(name: str) -> str:
    recipe = dataclasses.replace(ZOO[name], steps=2, warmup_steps=1, heldout_tokens=256)
    return str(recipe.build(log=lambda _: None))


def hf_nll(model: str, ids: list[int]) -> list[float]:
    """Next-token negative log-likelihoods of `ids` under HF eager fp32, the reference."""
    from backends.hf.eager import HFEager

    hf = HFEager(HFEager.Options(), threads=1)
    hf.load(model)
    nll = nll_of(hf.token_logits(ids), ids)
    hf.close()
    return nll


def nll_of(logits, ids: list[int]) -> list[float]:
    from scipy.special import log_softmax

    logp = log_softmax(np.asarray(logits, dtype=np.float64), axis=-1)
    return [-float(logp[k][ids[k + 1]]) for k in range(len(ids) - 1)]


@pytest.mark.parametrize(("name", "why"), [
    ("zoo-gemma3", "transformers 5 stores Gemma3ForCausalLM's RoPE per layer type"),
    ("zoo-olmo2", "has no recipe for Olmo2ForCausalLM"),
])
def test_onnx_export_of_an_architecture_the_builder_cannot_read_is_a_skip_with_its_reason(name, why):
    pytest.importorskip("onnxruntime_genai", reason="needs onnxruntime-genai: pip install 'bench[onnx]'")
    from backends.onnx.export import export

    with pytest.raises(NotSupportedHere, match=why):
        export(quick(name), "fp32")


def test_onnx_genai_runs_mistral_within_its_sliding_window_and_refuses_longer_sequences():
    pytest.importorskip("onnxruntime_genai", reason="needs onnxruntime-genai: pip install 'bench[onnx]'")
    from backends.onnx.genai import OnnxGenai

    model = quick("zoo-mistral")
    window = ZOO["zoo-mistral"].config_kwargs()["sliding_window"]
    genai = OnnxGenai(OnnxGenai.Options(), threads=1)
    genai.load(model)
    ids = genai.tokenize(heldout_text())[:window + 1]
    # within the window sliding and full attention see the same tokens: genai equals HF
    assert np.mean(nll_of(genai.token_logits(ids[:window]), ids[:window])) == pytest.approx(
        np.mean(hf_nll(model, ids[:window])), rel=1e-6)
    with pytest.raises(NotSupportedHere, match=f"{window}-token sliding window"):
        genai.token_logits(ids)
    genai.close()


def test_llama_cpp_loads_a_phi3_named_model_and_matches_hf():
    """llama.cpp sets Phi-3 token attributes on any model whose name says phi3 and looks up Phi-3's
    special tokens by name; the zoo's Phi-3 carries them, so its conversion loads and agrees with HF."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: pip install 'bench[gguf]'")
    from backends.gguf.llama_cpp import LlamaCpp

    model = quick("zoo-phi3")
    assert "zoo-phi3" in Path(model).name
    cpp = LlamaCpp(LlamaCpp.Options(quant="f32"), threads=1)
    cpp.load(model)
    ids = cpp.tokenize(heldout_text())[:128]
    got = np.mean(nll_of(cpp.token_logits(ids), ids))
    cpp.close()
    assert np.exp(got) == pytest.approx(np.exp(np.mean(hf_nll(model, ids))), rel=1e-4)


def test_openvino_export_capped_by_optimum_intel_is_a_skip_naming_both_versions(monkeypatch, tmp_path):
    """optimum-intel caps transformers per architecture; its message (as 2.2.0 words it) becomes the skip."""
    from backends.openvino import export as ov_export

    message = ("ValueError: The current version of Transformers does not allow for the export of the model. "
               "Maximum required is 5.0, got: 5.5.4")
    model = Path(quick("zoo-gemma3"))
    monkeypatch.setattr(ov_export, "cache_dir", lambda: tmp_path)
    monkeypatch.setattr(ov_export, "versions", lambda: {"optimum-intel": "2.2.0", "transformers": "5.5.4"})
    monkeypatch.setattr(ov_export, "run_python", lambda *a, **k: types.SimpleNamespace(returncode=1, output=message))
    with pytest.raises(NotSupportedHere, match=r"optimum-intel refuses to export Gemma3ForCausalLM with this "
                                               r"transformers: .*Maximum required is 5\.0, got: 5\.5\.4 "
                                               r"\(optimum-intel 2\.2\.0, transformers 5\.5\.4\)"):
        ov_export.export(model, "fp32", 64)
