"""Quantized variants of the HF backends: one small function per method, and honest weight bytes.

`QUANTIZATIONS` maps a suite's `quantization` option to a function `(load, device, backend) ->
model`, where `load(**kwargs)` calls `from_pretrained` with the backend's dtype and attention:

- `torch-dynamic-int8`: `torch.ao.quantization.quantize_dynamic` on every nn.Linear (int8
  weights, activations quantized per call; CPU only; deprecated upstream but present in torch 2.13);
- `torchao-int8-weight`, `torchao-int8-dynamic`, `torchao-int4-weight`: torchao `quantize_` with
  `Int8WeightOnlyConfig`, `Int8DynamicActivationInt8WeightConfig`, `Int4WeightOnlyConfig`
  (torchao's int4 weight-only layouts need CUDA: on a CPU the case is skipped with that reason);
- `bnb-int8`, `bnb-nf4`: bitsandbytes through transformers' `BitsAndBytesConfig` (LLM.int8 and
  4-bit NormalFloat), quantized while loading;
- `torchao-float8-weight`, `torchao-float8-dynamic`: torchao `Float8WeightOnlyConfig` (float8 e4m3
  weights, runs on a CPU) and `Float8DynamicActivationFloat8WeightConfig` (float8 activations too:
  torchao asserts CUDA compute capability >= 8.9, so elsewhere the case is skipped with that reason);
- `quanto-int8`, `quanto-int4`, `quanto-float8`: optimum-quanto `quantize(model, weights=qint8 |
  qint4 | qfloat8 (e4m3)); freeze(model)` on every nn.Linear, lm_head included (int4: groups of
  128, with a float scale and shift per group). Run under `torch.no_grad()`: under
  `torch.inference_mode()` its packed int weights raise "Cannot set version_counter for inference
  tensor" (`grad_mode` tells the backend);
- `gptq-w4a16`, `awq-w4a16`: a compressed-tensors checkpoint made by llm-compressor from the
  built-in corpus's train split (backends/llmcompressor/), loaded by `from_pretrained`. transformers
  has no CPU int4 kernel for it: compressed-tensors decompresses the weights to the backend's dtype on
  the first forward, so the weight bytes reported are the checkpoint's (packed int4 + scales +
  float tensors) and the decompressed bytes are in the description's details.

Quantized weights do not report their stored size through numel x element_size (torchao tensor
subclasses, bnb's packed 4-bit data and its scales, torch.ao packed params), so `stored_bytes`
counts what the model's state dict actually holds: integer data plus scales, zero points and the
tensors left in floating point.
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from backends.base import NotSupportedHere, require

TORCHAO_INT4_GROUP_SIZE = 128
FLOAT8_MIN_CAPABILITY = (8, 9)  # torchao's float8 activation kernels: Ada, Hopper and later


@dataclass(frozen=True)
class Loader:
    """How a backend loads its model: `from_pretrained` with its dtype and attention, from `path`.

    Calling it loads the suite's model (`path`); `load_from(other_path)` loads another directory with the
    same settings (a quantized checkpoint made from that model)."""

    path: str
    load_from: Callable[..., Any]

    def __call__(self, **kwargs):
        return self.load_from(self.path, **kwargs)


def _none(load: Callable, device: str, backend: str):
    return load().to(device)


def _torch_dynamic_int8(load: Callable, device: str, backend: str):
    torch = require("torch", "hf", backend)
    if device != "cpu":
        raise NotSupportedHere(f"quantization 'torch-dynamic-int8' runs on the CPU only (device is '{device}')")
    model = load()
    with warnings.catch_warnings():  # torch.ao.quantization's deprecation notice, once per module
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)


def _torchao(config_name: str, **config_kwargs) -> Callable:
    def quantize(load: Callable, device: str, backend: str):
        quantization = require("torchao.quantization", "torchao", backend)
        model = load().to(device)
        quantization.quantize_(model, getattr(quantization, config_name)(**config_kwargs))
        return model
    return quantize


def _torchao_int4_weight(load: Callable, device: str, backend: str):
    torch = require("torch", "hf", backend)
    quantization = require("torchao.quantization", "torchao", backend)
    if not device.startswith("cuda"):
        raise NotSupportedHere(
            "quantization 'torchao-int4-weight' is not supported on the CPU by the installed torchao: "
            "Int4WeightOnlyConfig's layouts are CUDA kernels (plain needs the CUDA package mslk, "
            "tile_packed_to_4d needs CUDA and bfloat16, plain_int32 has no CPU path)")
    model = load().to(device)
    if next(model.parameters()).dtype != torch.bfloat16:
        raise ValueError("quantization 'torchao-int4-weight' (tile_packed_to_4d) needs dtype: bfloat16")
    quantization.quantize_(model, quantization.Int4WeightOnlyConfig(
        group_size=TORCHAO_INT4_GROUP_SIZE, int4_packing_format="tile_packed_to_4d"))
    return model


def _bnb(**config_kwargs) -> Callable:
    def quantize(load: Callable, device: str, backend: str):
        require("bitsandbytes", "bnb", backend)
        require("accelerate", "bnb", backend)  # transformers needs it for bnb and device_map
        transformers = require("transformers", "hf", backend)
        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # 8-bit warns about a cast on every call
        config = transformers.BitsAndBytesConfig(**config_kwargs)
        return load(quantization_config=config, device_map=device)
    return quantize


def _torchao_float8(config_name: str) -> Callable:
    def quantize(load: Callable, device: str, backend: str):
        torch = require("torch", "hf", backend)
        quantization = require("torchao.quantization", "torchao", backend)
        capability = torch.cuda.get_device_capability(device) if device.startswith("cuda") else None
        if capability is None or capability < FLOAT8_MIN_CAPABILITY:
            raise NotSupportedHere(
                f"torchao {config_name} needs float8 matmul kernels: CUDA compute capability >= 8.9 (Ada, Hopper "
                f"or later), and this case runs on {device}" + (f" (capability {capability})" if capability else ""))
        model = load().to(device)
        quantization.quantize_(model, getattr(quantization, config_name)())
        return model
    return quantize


def _quanto(qtype: str) -> Callable:
    def quantize(load: Callable, device: str, backend: str):
        quanto = require("optimum.quanto", "quanto", backend)
        model = load().to(device)
        quanto.quantize(model, weights=getattr(quanto, qtype))
        quanto.freeze(model)  # the float weights are replaced by the quantized ones
        return model
    return quantize


def _llmcompressor(method: str) -> Callable:
    def quantize(load: Callable, device: str, backend: str):
        if not isinstance(load, Loader):
            raise TypeError(f"quantization '{method}' loads another directory: it needs a Loader, not {load!r}")
        from backends.llmcompressor.checkpoint import checkpoint

        require("compressed_tensors", "compressed", backend)  # transformers loads these checkpoints with it
        made = checkpoint(load.path, method, backend)
        model = load.load_from(str(made.path)).to(device)
        model.bench_checkpoint = made  # describe() reports how it was made
        model.bench_stored_bytes = stored_bytes(model)  # as stored: before the first forward decompresses it
        return model
    return quantize


QUANTIZATIONS: dict[str, Callable] = {
    "none": _none,
    "torch-dynamic-int8": _torch_dynamic_int8,
    "torchao-int8-weight": _torchao("Int8WeightOnlyConfig"),
    "torchao-int8-dynamic": _torchao("Int8DynamicActivationInt8WeightConfig"),
    "torchao-int4-weight": _torchao_int4_weight,
    "bnb-int8": _bnb(load_in_8bit=True),
    "bnb-nf4": _bnb(load_in_4bit=True, bnb_4bit_quant_type="nf4"),
    "torchao-float8-weight": _torchao("Float8WeightOnlyConfig"),
    "torchao-float8-dynamic": _torchao_float8("Float8DynamicActivationFloat8WeightConfig"),
    "quanto-int8": _quanto("qint8"),
    "quanto-int4": _quanto("qint4"),
    "quanto-float8": _quanto("qfloat8"),
    "gptq-w4a16": _llmcompressor("gptq-w4a16"),
    "awq-w4a16": _llmcompressor("awq-w4a16"),
}
NO_GRAD = frozenset({"quanto-int8", "quanto-int4", "quanto-float8"})  # inference_mode breaks quanto's int weights


def grad_mode(method: str, torch) -> Callable[[], contextlib.AbstractContextManager]:
    """The context the backend runs its forwards in: torch.inference_mode, or torch.no_grad where it breaks."""
    return torch.no_grad if method in NO_GRAD else torch.inference_mode


def load_quantized(method: str, load: Callable, device: str, backend: str):
    """The model `load()` gives, quantized by `method` (a key of QUANTIZATIONS), on `device`."""
    if method not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization '{method}'; valid: {', '.join(QUANTIZATIONS)}")
    return QUANTIZATIONS[method](load, device, backend)


# ---------------------------------------------------------------- what the weights occupy

def tensor_bytes(value, seen: set) -> int:
    """Bytes `value` (a tensor, quantized tensor, tensor subclass, or tuple of them) holds; shared storage once."""
    import torch

    if isinstance(value, (tuple, list)):
        return sum(tensor_bytes(v, seen) for v in value)
    if not isinstance(value, torch.Tensor):
        return 0
    if type(value) not in (torch.Tensor, torch.nn.Parameter) and hasattr(value, "__tensor_flatten__"):
        inner_names, _ = value.__tensor_flatten__()  # torchao subclasses: int data, scales, zero points
        return sum(tensor_bytes(getattr(value, name), seen) for name in inner_names)
    key = (value.data_ptr(), value.numel(), value.dtype)
    if value.numel() and key in seen:  # tied weights: one storage, counted once
        return 0
    seen.add(key)
    data = value.numel() * value.element_size()
    if not value.is_quantized:
        return data
    if value.qscheme() in (torch.per_channel_affine, torch.per_channel_affine_float_qparams):
        return data + tensor_bytes(value.q_per_channel_scales(), seen) + \
            tensor_bytes(value.q_per_channel_zero_points(), seen)
    return data + 16  # per-tensor: one float64 scale and one int64 zero point


def stored_bytes(model) -> int:
    """Bytes the model's weights occupy as stored: every state-dict tensor and buffer, shared storage once."""
    seen: set = set()
    return sum(tensor_bytes(value, seen) for value in [*model.state_dict().values(), *model.buffers()])


def n_parameters(model) -> int:
    """Number of weights the model stands for, however they are packed (same for every variant)."""
    total = 0
    for module in model.modules():
        if callable(getattr(module, "weight", None)):  # torch.ao packed Linear: weight() and bias()
            total += module.weight().numel() + (module.bias().numel() if module.bias() is not None else 0)
        for param in module.parameters(recurse=False):
            quant_state = getattr(param, "quant_state", None)  # bnb 4-bit: two values per byte
            total += quant_state.shape.numel() if quant_state is not None else param.numel()
    return total
