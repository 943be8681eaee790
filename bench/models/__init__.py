"""Models the benchmarks run on: built-in offline models and resolution of model specs.

A model spec is a built-in name (built on first use into the cache, see `cache.py`), a local
path, or a Hugging Face hub id (resolved to its snapshot directory in the HF cache, downloaded there unless
HF_HUB_OFFLINE; returned unchanged when it cannot be had).
Importing this package is cheap: torch/transformers/tokenizers are imported only when building.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from bench.models import tiny_llama, tiny_variants
from bench.models.realistic import CONTEXT as REALISTIC_CONTEXT
from bench.models.realistic import NAME as REALISTIC
from bench.models.realistic import build as build_realistic
from bench.models.zoo import BUILDERS as ZOO_BUILDERS
from bench.models.zoo import CONTEXT as ZOO_CONTEXT

BUILTIN_MODELS: dict[str, Callable[..., Path]] = {
    "tiny-llama": tiny_llama.build,
    **tiny_variants.BUILDERS,
    REALISTIC: build_realistic,
    **ZOO_BUILDERS,
}
# context length (tokens) of each built-in model, known without building it (suites are checked against it)
BUILTIN_CONTEXT: dict[str, int] = {
    "tiny-llama": tiny_llama.CONTEXT,
    **tiny_variants.CONTEXT,
    REALISTIC: REALISTIC_CONTEXT,
    **dict.fromkeys(ZOO_BUILDERS, ZOO_CONTEXT),
}


class UnknownModelError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def build_builtin(name: str, force: bool = False, log: Callable[[str], None] = print) -> Path:
    """Directory of the built-in model `name`, building it first if it is not cached."""
    if name not in BUILTIN_MODELS:
        raise UnknownModelError(
            f"unknown built-in model {name!r}; valid names: {', '.join(sorted(BUILTIN_MODELS))}"
        )
    return BUILTIN_MODELS[name](force=force, log=log)


def resolve_model(spec: str, log: Callable[[str], None] = print) -> str:
    """Built-in name -> its built directory; existing local path -> absolute path; else a hub id, unchanged."""
    if spec in BUILTIN_MODELS:
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
        from huggingface_hub import snapshot_download
    except ImportError:
        return None
    try:
        return snapshot_download(spec, allow_patterns=HUB_FILES)
    except (OSError, ValueError):  # LocalEntryNotFoundError, RepositoryNotFoundError (HTTP), HFValidationError
        return None
