"""Backend registry: name -> "module:Class", resolved lazily so listing backends imports nothing heavy.

Backends are grouped by family: `hf/` (transformers), `onnx/` (ONNX Runtime), `gguf/` (llama.cpp),
`vllm/`, `openvino/` (and `llmcompressor/`: the GPTQ/AWQ checkpoints HF and vLLM load). To add a
backend: write one module implementing `backends.base.Backend` (in its family's folder, or a new
one), and add one line to REGISTRY (a registry of import paths, bench/core/registry.py). A suite may also
name any importable "package.module:Class" directly (see the README on what a suite can execute).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from bench.core.registry import Registry, UnknownName

if TYPE_CHECKING:
    from backends.base import Backend


class UnknownBackend(UnknownName):
    """A backend name that is not registered, or an import path that names no backend (a KeyError)."""


REGISTRY: Registry[type[Backend]] = Registry("backend", {
    "hf-eager": "backends.hf.eager:HFEager",
    "bettertransformer": "backends.hf.bettertransformer:BetterTransformer",
    "llama-cpp": "backends.gguf.llama_cpp:LlamaCpp",
    "vllm": "backends.vllm.engine:VLLM",
    "onnx-genai": "backends.onnx.genai:OnnxGenai",
    "onnx-ort": "backends.onnx.ort:OnnxOrt",
    "openvino": "backends.openvino.runtime:OpenVINO",
}, error=UnknownBackend, listing="registered", paths=True)


def backend_class(name: str):  # untyped, as before: callers use a family's own class methods (LlamaCpp's)
    """The Backend subclass registered as `name`, or named by an import path "module:Class" (else UnknownBackend)."""
    from backends.base import Backend

    cls = REGISTRY[name]
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        target = REGISTRY.path(name) if name in REGISTRY else name
        raise UnknownBackend(f"backend '{name}' -> {target} is not a backend (a subclass of backends.base.Backend)")
    return cls
