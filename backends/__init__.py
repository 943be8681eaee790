"""Backend registry: name -> "module:Class", resolved lazily so listing backends imports nothing heavy.

To add a backend: write one module in this package implementing `backends.base.Backend`, and add
one line to REGISTRY. A suite may also name any importable "package.module:Class" directly.
"""
from __future__ import annotations

import importlib

REGISTRY: dict[str, str] = {
    "hf-eager": "backends.hf_eager:HFEager",
    "bettertransformer": "backends.bettertransformer:BetterTransformer",
    "llama-cpp": "backends.llama_cpp:LlamaCpp",
    "vllm": "backends.vllm:VLLM",
    "onnx-genai": "backends.onnx_genai:OnnxGenai",
    "onnx-ort": "backends.onnx_ort:OnnxOrt",
}


class UnknownBackend(KeyError):
    def __str__(self) -> str:
        return self.args[0]


def backend_class(name: str):
    """The Backend subclass registered as `name`, or named by an import path "module:Class"."""
    target = REGISTRY.get(name, name if ":" in name else None)
    if target is None:
        raise UnknownBackend(f"unknown backend '{name}'; registered: {', '.join(sorted(REGISTRY))}")
    module_name, class_name = target.split(":", 1)
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise UnknownBackend(f"backend '{name}' -> {target} cannot be imported: {exc}") from exc
