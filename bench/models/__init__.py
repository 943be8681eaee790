"""Models the benchmarks run on: the built-in models, built offline into the cache, and resolution of model specs.

Each built-in is a recipe (bench/models/recipe.py: its hash names its cache directory, built once under a lock)
registered by name in `MODELS` (a registry, bench/core/registry.py): `tiny-llama` (tiny_llama.py) and its attention
variants (tiny_variants.py), `qwen2.5-0.5b-shape` (realistic.py) and the architecture zoo (zoo.py); the trained
ones (tiny-llama, its variants, the zoo) share one training loop (training.py) on the stdlib docstring corpus
(corpus.py), and tokenizers come from tokenizer.py; calibration.py cuts the quantizers' calibration sets from that
corpus. A model spec is a built-in name (built on first use), a local path, or a Hugging Face hub id (resolved to
its snapshot directory in the HF cache, downloaded there unless HF_HUB_OFFLINE; returned unchanged when it cannot
be had). Importing this package is cheap: torch/transformers/tokenizers are imported only when building.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from bench.core.registry import UnknownName
from bench.models import realistic, tiny_llama, tiny_variants, zoo  # noqa: F401 - each registers its built-ins
from bench.models.recipe import MODELS

__all__ = ["MODELS", "UnknownName", "build_builtin", "hub_snapshot", "resolve_model"]


def build_builtin(name: str, force: bool = False, log: Callable[[str], None] = print) -> Path:
    """Directory of the built-in model `name`, building it first if it is not cached (UnknownName if none)."""
    return MODELS[name].build(force=force, log=log)


def resolve_model(spec: str, log: Callable[[str], None] = print) -> str:
    """Built-in name -> its built directory; existing local path -> absolute path; else a hub id, unchanged."""
    if spec in MODELS:
        return str(build_builtin(spec, log=log))
    path = Path(spec).expanduser()
    if path.exists():
        return str(path.resolve())
    snapshot = hub_snapshot(spec)  # a hub id: its directory in the HF cache, so conversions (GGUF, ONNX) work too
    if snapshot is not None:
        return snapshot
    return spec


# what a hub model needs to run and be converted: configs, safetensors weights, tokenizer files (no .bin/.pth copies)
HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja"]


def hub_snapshot(spec: str) -> str | None:
    """The local directory of the hub model `spec` in the Hugging Face cache (HF_HOME / HF_HUB_CACHE: a CI
    runner's persists between runs), downloaded there first unless HF_HUB_OFFLINE is set; None when it cannot
    be had here (not a hub id, not cached offline, no such repository): the backend then says why."""
    try:
        from huggingface_hub import constants
    except ImportError:
        return None
    if constants.HF_HUB_OFFLINE and not (Path(constants.HF_HUB_CACHE) / f"models--{spec.replace('/', '--')}").is_dir():
        return None  # offline and not in the cache: what snapshot_download would find, without its 0.3 s import
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(spec, allow_patterns=HUB_FILES)
    except (OSError, ValueError):  # LocalEntryNotFoundError, RepositoryNotFoundError (HTTP), HFValidationError
        return None
