"""Attention kernels of the HF backends: what the `attention` option forces, and which kernel actually ran.

`attention: NAME` picks transformers' attention implementation (`attn_implementation`) and, for SDPA,
forces one of torch's kernels with `torch.nn.attention.sdpa_kernel` around every forward:

| name | transformers | torch kernel forced | operator that proves it ran (CPU / CUDA) |
|---|---|---|---|
| eager | eager | none (matmul + softmax in Python) | `aten::_softmax`, and no fused attention operator |
| sdpa | sdpa | none: torch chooses | whichever `aten::_scaled_dot_product_*` ran (recorded) |
| sdpa-math | sdpa | MATH | `aten::_scaled_dot_product_attention_math` |
| sdpa-flash | sdpa | FLASH_ATTENTION | `aten::_scaled_dot_product_flash_attention_for_cpu` / `..._flash_attention` |
| sdpa-efficient | sdpa | EFFICIENT_ATTENTION | `aten::_scaled_dot_product_efficient_attention` (CUDA only) |
| sdpa-cudnn | sdpa | CUDNN_ATTENTION | `aten::_scaled_dot_product_cudnn_attention` (CUDA only) |
| flex | flex_attention | none (flex_attention, compiled) | bench's range around it, a compiled region, no softmax |
| flash-attention-2 | flash_attention_2 | none (the flash-attn package) | a `flash_attn` operator (CUDA only) |

A kernel this machine cannot run is refused at load with `NotSupportedHere` (the case is recorded as
skipped with why): a CUDA-only kernel on a CPU, a missing package, or an SDPA kernel that torch itself
refuses for this device and dtype (probed with one small call under the forced kernel; torch's own
reasons are kept). Which kernel ran is read from the torch profiler, not assumed: `verify` runs one
short profiled prefill and decode step after the case was measured (never during timed steps) and
records every attention operator the profile shows, and whether the expected one is among them and no
other fused attention kernel ran. Flex attention has no operator name of its own: transformers runs it
through `torch.compile` (inductor generates the kernel, which the profiler shows as a "Torch-Compiled
Region" and a "CompiledFxGraph" call), so `label_flex` wraps transformers' flex function in a profiler
range, `transformers::flex_attention_forward`; the first generation compiles (tens of seconds on a busy
CPU, again for each new prompt length: warm-up runs absorb it).
"""
from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from backends.base import NotSupportedHere, require
from bench.core.description import AttentionInfo

Attention = Literal["eager", "sdpa", "sdpa-math", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "flex",
                    "flash-attention-2"]

# operators that are attention kernels (or eager attention's softmax), by name; the profile keeps these
KERNEL_OPS = re.compile(r"scaled_dot_product|flex_attention|flash_attn|_flash_attention|softmax|^Torch-Compiled Region",
                        re.IGNORECASE)
FUSED = re.compile(r"scaled_dot_product|flex_attention|flash_attn", re.IGNORECASE)  # any fused attention kernel


@dataclass(frozen=True)
class Kernel:
    """One `attention` choice: transformers' implementation, the SDPA backend forced, how to recognize it."""

    attn_implementation: str
    sdpa_backend: str | None = None  # a torch.nn.attention.SDPBackend member, None: nothing forced
    expected: dict[str, str] | None = None  # "cpu" / "cuda" -> regex an operator that proves the kernel must match
    cuda_only: str | None = None  # why it cannot run elsewhere
    package: tuple[str, str] | None = None  # (module, pip extra) it needs
    with_op: str | None = None  # regex another operator must match as well (flex: its compiled kernel)

    def expected_pattern(self, device: str) -> str | None:
        if self.expected is None:
            return None
        return self.expected.get("cuda" if device.startswith("cuda") else "cpu")


KERNELS: dict[str, Kernel] = {
    "eager": Kernel("eager", expected={"cpu": r"^aten::_?softmax$", "cuda": r"^aten::_?softmax$"}),
    "sdpa": Kernel("sdpa", expected={"cpu": r"scaled_dot_product", "cuda": r"scaled_dot_product"}),
    "sdpa-math": Kernel("sdpa", "MATH", {"cpu": r"^aten::_scaled_dot_product_attention_math$",
                                         "cuda": r"^aten::_scaled_dot_product_attention_math$"}),
    "sdpa-flash": Kernel("sdpa", "FLASH_ATTENTION",
                         {"cpu": r"^aten::_scaled_dot_product_flash_attention_for_cpu$",
                          "cuda": r"^aten::_scaled_dot_product_flash_attention$"}),
    "sdpa-efficient": Kernel("sdpa", "EFFICIENT_ATTENTION",
                             {"cuda": r"^aten::_scaled_dot_product_efficient_attention$"},
                             cuda_only="torch's memory-efficient SDPA kernel (EFFICIENT_ATTENTION) has a CUDA "
                                       "implementation only; torch's CPU SDPA kernels are math and flash"),
    "sdpa-cudnn": Kernel("sdpa", "CUDNN_ATTENTION", {"cuda": r"^aten::_scaled_dot_product_cudnn_attention$"},
                         cuda_only="torch's cuDNN SDPA kernel (CUDNN_ATTENTION) needs an NVIDIA GPU and cuDNN"),
    "flex": Kernel("flex_attention", expected={"cpu": r"^transformers::flex_attention_forward$",
                                               "cuda": r"^transformers::flex_attention_forward$"},
                   with_op=r"^Torch-Compiled Region"),
    "flash-attention-2": Kernel("flash_attention_2", expected={"cuda": r"flash_attn"},
                                cuda_only="flash-attn's FlashAttention-2 kernels are CUDA-only (NVIDIA Ampere or "
                                          "newer)",
                                package=("flash_attn", "flash-attn")),
}


def kernel(name: str) -> Kernel:
    if name not in KERNELS:
        raise ValueError(f"unknown attention '{name}'; valid: {', '.join(KERNELS)}")
    return KERNELS[name]


def check_supported(name: str, device: str, dtype: str, backend: str) -> None:
    """Raise NotSupportedHere (or MissingDependency) when kernel `name` cannot run on `device` with `dtype`."""
    k = kernel(name)
    if k.cuda_only and not device.startswith("cuda"):
        raise NotSupportedHere(f"attention '{name}' cannot run on {device}: {k.cuda_only}")
    if k.package:
        require(k.package[0], k.package[1], backend)
    if k.sdpa_backend:
        _probe_sdpa(k, name, device, dtype)


def _probe_sdpa(k: Kernel, name: str, device: str, dtype: str) -> None:
    """One small causal SDPA call under the forced kernel: torch refuses a kernel it cannot use here."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.zeros(1, 4, 8, 32, device=device, dtype=getattr(torch, dtype))
    with warnings.catch_warnings(record=True) as caught, sdpa_kernel([getattr(SDPBackend, k.sdpa_backend or "")]):
        warnings.simplefilter("always")
        try:
            torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
        except RuntimeError as exc:
            why = "; ".join(str(w.message).strip() for w in caught) or str(exc)
            raise NotSupportedHere(f"attention '{name}': torch refuses SDPBackend.{k.sdpa_backend} on {device} "
                                   f"with {dtype}: {why}") from None


def label_flex(torch) -> None:
    """Wrap transformers' flex_attention function (its attention registry) in a profiler range, once per process."""
    from transformers import AttentionInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    inner = ALL_ATTENTION_FUNCTIONS["flex_attention"]
    if getattr(inner, "bench_labelled", False):
        return

    def labelled(*args, **kwargs):
        with torch.profiler.record_function("transformers::flex_attention_forward"):
            return inner(*args, **kwargs)

    labelled.bench_labelled = True  # type: ignore[attr-defined]
    AttentionInterface.register("flex_attention", labelled)


def forcing(name: str) -> Callable[[], contextlib.AbstractContextManager]:
    """The context every forward of this backend runs in: sdpa_kernel(the forced backend), or nothing."""
    k = kernel(name)
    if not k.sdpa_backend:
        return contextlib.nullcontext
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = getattr(SDPBackend, k.sdpa_backend)
    return lambda: sdpa_kernel([backend])


def profiled_ops(run: Callable[[], Any]) -> dict[str, int]:
    """{operator name: calls} of the attention operators torch.profiler records while `run()` runs."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        run()
    return {e.key: e.count for e in prof.key_averages() if KERNEL_OPS.search(e.key)}


def verdict(name: str, device: str, ops: dict[str, int]) -> AttentionInfo:
    """What the profile says about kernel `name`: the operators that ran, and whether they prove it."""
    k = kernel(name)
    pattern = k.expected_pattern(device)
    kernels = [op for op in sorted(ops) if not _wraps(op)]
    fused = [op for op in kernels if FUSED.search(op)]
    matched = [op for op in kernels if pattern and re.search(pattern, op)]
    if name == "eager":
        verified, why = bool(matched) and not fused, ("no fused attention operator ran, softmax did" if matched
                                                      and not fused else f"fused operators ran: {fused}" if fused
                                                      else "no softmax operator in the profile")
    elif name == "sdpa":  # nothing forced: torch's choice is what is recorded
        verified = len(matched) == 1
        why = f"torch chose {matched[0]}" if verified else f"SDPA operators in the profile: {matched or 'none'}"
    else:
        others = [op for op in fused if op not in matched]
        if k.with_op:  # flex: its compiled kernel ran inside bench's range, and no softmax outside one
            companion = [op for op in kernels if re.search(k.with_op, op)]
            others += [op for op in kernels if "softmax" in op.lower()]
            matched = matched + companion if matched and companion else []
        verified = bool(matched) and not others
        why = (f"{matched[0]} ran" if verified else f"expected an operator matching {pattern!r}; the profile has "
               f"{matched + others or 'no fused attention operator'}")
    return AttentionInfo(requested=name, kernel_ops=ops, expected_op=pattern, verified=verified, verdict=why)


def _wraps(op: str) -> bool:
    """The dispatcher's entry point, which every SDPA kernel runs under: not a kernel of its own."""
    return op in ("aten::scaled_dot_product_attention",)


def verify(name: str, device: str, torch, forward: Callable, cache_arg: str,
           contexts: list[Callable[[], contextlib.AbstractContextManager]]) -> AttentionInfo:
    """Profile one 16-token prefill and one decode step of `forward` inside `contexts`; the verdict on `name`.

    Run after the case was measured. A failure is recorded in the verdict, never raised: the measurement stands."""
    ids = torch.arange(1, 17, device=device).unsqueeze(0)

    def run() -> None:
        with contextlib.ExitStack() as stack:
            for context in contexts:
                stack.enter_context(context())
            out = forward(input_ids=ids, use_cache=True)
            forward(input_ids=ids[:, -1:], use_cache=True, **{cache_arg: getattr(out, cache_arg)})
    try:
        return verdict(name, device, profiled_ops(run))
    except Exception as exc:  # noqa: BLE001 -- recorded: which kernel ran stays unknown, the numbers stand
        return AttentionInfo(requested=name, verified=False, verdict=f"profiling failed: {type(exc).__name__}: {exc}")
