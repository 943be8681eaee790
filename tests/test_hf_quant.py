"""Quantized HF variants on the real tiny-llama: they run, stay close to fp32, and report honest sizes.

Weight bytes are checked against known answers computed from the fp32 model's own layers: int8
stores one byte per Linear weight (a quarter of fp32) plus per-row or per-tensor scales, NF4 half
a byte plus one absmax per 64-weight block; everything not quantized stays float32.
"""
import math

import numpy as np
import pytest

from backends.base import NotSupportedHere
from backends.hf.eager import HFEager
from backends.hf.quant import QUANTIZATIONS, stored_bytes
from bench.measure.evaltext import eval_text
from bench.measure.perplexity import perplexity
from bench.measure.quality import Comparison
from tests.conftest import load_hf, load_records, run_bench, write_suite

pytestmark = pytest.mark.slow

RUNNABLE_ON_CPU = ["torch-dynamic-int8", "torchao-int8-weight", "torchao-int8-dynamic", "bnb-int8", "bnb-nf4",
                   "torchao-float8-weight", "quanto-int8", "quanto-int4", "quanto-float8"]
EVAL_TOKENS, WINDOW, STRIDE = 768, 128, 64


def _load(path: str, quantization: str) -> HFEager:
    return load_hf(path, quantization=quantization)


@pytest.fixture(scope="module")
def fp32(tiny_llama):
    backend = _load(tiny_llama, "none")
    ids = backend.tokenize(eval_text("stdlib-heldout"))[:EVAL_TOKENS]
    windows = []
    result = perplexity(backend.token_logits, ids, WINDOW, STRIDE, on_window=lambda lp, t: windows.append((lp, t)))
    return backend, ids, result, windows


@pytest.fixture(scope="module")
def layers(fp32):
    """Linear weight counts and the bytes of everything else, read from the fp32 model."""
    import torch

    model = fp32[0].model
    linears = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    linear_numel = {name: m.weight.numel() for name, m in linears.items()}
    rows = {name: m.out_features for name, m in linears.items()}
    other = stored_bytes(model) - 4 * sum(linear_numel.values())
    return linear_numel, rows, other


@pytest.fixture(scope="module")
def kld():
    return {}


@pytest.mark.parametrize("quantization", RUNNABLE_ON_CPU)
def test_quantized_variant_generates_and_its_perplexity_stays_near_fp32(tiny_llama, fp32, kld, quantization):
    reference, ids, ref_result, ref_windows = fp32
    backend = _load(tiny_llama, quantization)
    steps = []
    out = backend.generate([ids[:32], ids[100:132]], 8, lambda: steps.append(1))
    assert len(steps) == 8 and [len(seq) for seq in out] == [8, 8]
    comparison, pending = Comparison(), iter(ref_windows)

    def on_window(logprobs, targets):
        comparison.add(next(pending)[0], logprobs, targets)

    result = perplexity(backend.token_logits, ids, WINDOW, STRIDE, on_window=on_window)
    assert math.isfinite(result.perplexity)
    assert 0.9 < result.perplexity / ref_result.perplexity < 1.25
    scores = comparison.result()
    assert scores.kld_mean > 0 and scores.top1_agreement > 0.9
    kld[quantization] = scores.kld_mean
    description = backend.describe()
    assert description.quantization == quantization
    assert description.n_parameters == reference.describe().n_parameters


def test_quanto_int4_and_float8_diverge_more_than_quanto_int8(kld):
    if not {"quanto-int8", "quanto-int4", "quanto-float8"} <= set(kld):
        pytest.skip("needs the three quanto runs above")
    assert kld["quanto-int4"] > kld["quanto-int8"] > 0
    assert kld["quanto-float8"] > kld["quanto-int8"]  # e4m3 keeps 3 mantissa bits; int8 per row keeps 8


def test_quanto_and_torchao_float8_weights_round_alike(kld):
    if not {"quanto-float8", "torchao-float8-weight"} <= set(kld):
        pytest.skip("needs both float8 runs above")
    # both scale each row by its absmax / 448 and round to the nearest e4m3 value: the same weights
    assert kld["quanto-float8"] == pytest.approx(kld["torchao-float8-weight"], rel=1e-6)


def test_quanto_runs_under_no_grad_where_inference_mode_breaks_its_int_weights(tiny_llama):
    import torch

    backend = _load(tiny_llama, "quanto-int4")
    with pytest.raises(RuntimeError, match="version_counter"), torch.inference_mode():
        backend.model(torch.tensor([[1, 2, 3]]))
    assert backend._grad is torch.no_grad
    assert len(backend.generate([[1, 2, 3]], 4, lambda: None)[0]) == 4


def test_nf4_diverges_more_than_per_row_int8(kld):
    if not {"bnb-nf4", "bnb-int8", "torchao-int8-weight"} <= set(kld):
        pytest.skip("needs the bnb-nf4, bnb-int8 and torchao-int8-weight runs above")
    assert kld["bnb-nf4"] > kld["bnb-int8"] > 0
    assert kld["bnb-nf4"] > kld["torchao-int8-weight"] > 0


@pytest.mark.parametrize("quantization, skipped, per_weight, per_row_max", [
    ("torch-dynamic-int8", [], 1.0, 0),          # per-tensor scale and zero point: a few bytes per layer
    ("torchao-int8-weight", [], 1.0, 8),          # one scale (and zero point) per output row
    ("torchao-int8-dynamic", [], 1.0, 8),
    ("bnb-int8", ["lm_head"], 1.0, 4),            # one float32 absmax (SCB) per row; lm_head kept fp32
    ("bnb-nf4", ["lm_head"], 0.5, 0),             # two weights per byte; absmax per block below
    ("torchao-float8-weight", [], 1.0, 4),        # float8 e4m3 weights, one float32 scale per row
    ("quanto-int8", [], 1.0, 4),                  # int8, one float32 scale per row (+ 2 activation scales)
    ("quanto-float8", [], 1.0, 4),                # float8 e4m3, one float32 scale per row
    ("quanto-int4", [], 0.5, 0),                  # two weights per byte; scale and shift per 128-weight group
])
def test_quantized_model_size_is_what_is_stored(tiny_llama, layers, quantization, skipped, per_weight, per_row_max):
    linear_numel, rows, other = layers
    quantized = {name: n for name, n in linear_numel.items() if name not in skipped}
    kept = 4 * sum(n for name, n in linear_numel.items() if name in skipped)
    size = _load(tiny_llama, quantization).describe().model_size_bytes
    data = per_weight * sum(quantized.values())
    extra = size - other - kept - data  # scales, zero points, block statistics
    if quantization == "bnb-nf4":
        blocks = sum(quantized.values()) / 64
        assert 2 * blocks <= extra <= 4 * blocks + 2048  # bf16/fp32 absmax per block, 16-entry code book
    elif quantization == "quanto-int4":
        groups = sum(quantized.values()) / 128
        assert extra == pytest.approx(8 * groups, abs=64 * len(quantized))  # float32 scale + shift per group
    else:
        assert 0 <= extra <= per_row_max * sum(rows[name] for name in quantized) + 64 * len(quantized)
    # a quarter (int8) or an eighth (nf4) of the fp32 Linear bytes, plus at most 4 bytes of scales per 64
    # weights and a few hundred bytes of metadata per layer
    n = sum(quantized.values())
    assert per_weight * n <= size - other - kept <= (per_weight + 4 / 64) * n + 256 * len(quantized)


def test_torchao_int4_weight_reports_why_it_cannot_run_on_a_cpu(tiny_llama):
    with pytest.raises(NotSupportedHere, match="not supported on the CPU"):  # so the case is skipped, not failed
        _load(tiny_llama, "torchao-int4-weight")


def test_torchao_float8_dynamic_reports_why_it_needs_a_recent_gpu(tiny_llama):
    with pytest.raises(NotSupportedHere, match="compute capability >= 8.9"):  # skipped on a CPU, with why
        _load(tiny_llama, "torchao-float8-dynamic")


def test_every_quantization_option_is_accepted_and_an_unknown_one_is_rejected():
    from pydantic import ValidationError

    for name in QUANTIZATIONS:
        assert HFEager.Options(quantization=name).quantization == name
    with pytest.raises(ValidationError):
        HFEager.Options(quantization="int3")


def test_fp32_model_size_is_four_bytes_per_parameter(fp32):
    description = fp32[0].describe()
    assert description.quantization is None
    # parameters plus the rotary embedding's inverse-frequency buffers (float32)
    assert 4 * description.n_parameters <= description.model_size_bytes <= 4 * description.n_parameters + 1024
    assert np.isfinite(fp32[2].perplexity)


@pytest.mark.slow
def test_a_variant_this_hardware_cannot_run_is_skipped_and_the_run_exits_0(tiny_llama, tmp_path):
    """suites/quant.yaml's torchao-int4-weight needs CUDA: on a CPU it is skipped with the reason, not failed."""
    write_suite(tmp_path / "s.yaml", """
        name: cpu-quant
        models: [tiny-llama]
        backends:
          - {backend: hf-eager, label: fp32}
          - {backend: hf-eager, label: torchao-int4-weight, options: {quantization: torchao-int4-weight}}
        reference: fp32
        workloads: [{batch_size: 1, prompt_tokens: 16, new_tokens: 4}]
        tasks: [latency]
        repetitions: {warmup: 0, min: 3, max: 3, processes: 1}
        timeout_s: 300
    """)
    proc = run_bench("run", "s.yaml", "--run-id", "q", cwd=tmp_path, check_exit=0)
    records = {r.variant: r for r in load_records(tmp_path / "results" / "q")}
    assert records["fp32"].status == "ok"
    assert records["torchao-int4-weight"].status == "skipped"
    assert "not supported on the CPU" in records["torchao-int4-weight"].reason
    report = (tmp_path / "reports" / "q" / "report.md").read_text()
    assert "torchao-int4-weight" in report and ": skipped: quantization 'torchao-int4-weight'" in report
    assert "skipped" in proc.stdout
