"""Backend registry: name -> "module:Class", resolved lazily so listing backends imports nothing heavy.

Backends are grouped by family: `hf/` (transformers), `onnx/` (ONNX Runtime), `gguf/` (llama.cpp),
`vllm/`, `openvino/` (and `llmcompressor/`: the GPTQ/AWQ checkpoints HF and vLLM load). To add a
backend: write one module implementing `backends.base.Backend` (in its family's folder, or a new
one), and add one line to REGISTRY. A suite may also name any importable "package.module:Class"
directly (see the README on what a suite can execute).
"""
from __future__ import annotations

import importlib

REGISTRY: dict[str, str] = {
    "hf-eager": "backends.hf.eager:HFEager",
    "bettertransformer": "backends.hf.bettertransformer:BetterTransformer",
    "llama-cpp": "backends.gguf.llama_cpp:LlamaCpp",
    "vllm": "backends.vllm.engine:VLLM",
    "onnx-genai": "backends.onnx.genai:OnnxGenai",
    "onnx-ort": "backends.onnx.ort:OnnxOrt",
    "openvino": "backends.openvino.runtime:OpenVINO",
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
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise UnknownBackend(f"backend '{name}' -> {target} cannot be imported: {exc}") from exc
    from backends.base import Backend

    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise UnknownBackend(f"backend '{name}' -> {target} is not a backend (a subclass of backends.base.Backend)")
    return cls
