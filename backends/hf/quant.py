"""Quantized variants of the HF backends: one small function per method, and honest weight bytes.

`QUANTIZATIONS` maps a suite's `quantization` option to a function `(load, device, backend) ->
model`, where `load(**kwargs)` calls `from_pretrained` with the backend's dtype and attention:

- `torch-dynamic-int8`: `torch.ao.quantization.quantize_dynamic` on every nn.Linear (int8
  weights, activations quantized per call; CPU only; deprecated upstream but present in torch 2.13);
- `torchao-int8-weight`, `torchao-int8-dynamic`, `torchao-int4-weight`: torchao `quantize_` with
  `Int8WeightOnlyConfig`, `Int8DynamicActivationInt8WeightConfig`, `Int4WeightOnlyConfig`
  (torchao's int4 weight-only layouts need CUDA: on a CPU the case is skipped with that reason);
- `bnb-int8`, `bnb-nf4`: bitsandbytes through transformers' `BitsAndBytesConfig` (LLM.int8 and
  4-bit NormalFloat), quantized while loading.

Quantized weights do not report their stored size through numel x element_size (torchao tensor
subclasses, bnb's packed 4-bit data and its scales, torch.ao packed params), so `stored_bytes`
counts what the model's state dict actually holds: integer data plus scales, zero points and the
tensors left in floating point.
"""
from __future__ import annotations

import logging
import warnings
from collections.abc import Callable

from backends.base import NotSupportedHere, require

TORCHAO_INT4_GROUP_SIZE = 128


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


QUANTIZATIONS: dict[str, Callable] = {
    "none": _none,
    "torch-dynamic-int8": _torch_dynamic_int8,
    "torchao-int8-weight": _torchao("Int8WeightOnlyConfig"),
    "torchao-int8-dynamic": _torchao("Int8DynamicActivationInt8WeightConfig"),
    "torchao-int4-weight": _torchao_int4_weight,
    "bnb-int8": _bnb(load_in_8bit=True),
    "bnb-nf4": _bnb(load_in_4bit=True, bnb_4bit_quant_type="nf4"),
}


def load_quantized(method: str, load: Callable, device: str, backend: str):
    """The model `load()` gives, quantized by `method` (a key of QUANTIZATIONS), on `device`."""
    if method not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization '{method}'; valid: {', '.join(QUANTIZATIONS)}")
    return QUANTIZATIONS[method](load, device, backend)


# ---------------------------------------------------------------- what the weights occupy

def _tensor_bytes(value, seen: set) -> int:
    import torch

    if isinstance(value, (tuple, list)):
        return sum(_tensor_bytes(v, seen) for v in value)
    if not isinstance(value, torch.Tensor):
        return 0
    if type(value) not in (torch.Tensor, torch.nn.Parameter) and hasattr(value, "__tensor_flatten__"):
        inner_names, _ = value.__tensor_flatten__()  # torchao subclasses: int data, scales, zero points
        return sum(_tensor_bytes(getattr(value, name), seen) for name in inner_names)
    key = (value.data_ptr(), value.numel(), value.dtype)
    if value.numel() and key in seen:  # tied weights: one storage, counted once
        return 0
    seen.add(key)
    data = value.numel() * value.element_size()
    if not value.is_quantized:
        return data
    if value.qscheme() in (torch.per_channel_affine, torch.per_channel_affine_float_qparams):
        return data + _tensor_bytes(value.q_per_channel_scales(), seen) + \
            _tensor_bytes(value.q_per_channel_zero_points(), seen)
    return data + 16  # per-tensor: one float64 scale and one int64 zero point


def stored_bytes(model) -> int:
    """Bytes the model's weights occupy as stored: every state-dict tensor and buffer, shared storage once."""
    seen: set = set()
    return sum(_tensor_bytes(value, seen) for value in [*model.state_dict().values(), *model.buffers()])


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
