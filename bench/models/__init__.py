"""Models the benchmarks run on: built-in offline models and resolution of model specs.

A model spec is a built-in name (built on first use into the cache, see `cache.py`), a local
path, or a Hugging Face hub id (returned unchanged; loading it needs network access).
Importing this package is cheap: torch/transformers/tokenizers are imported only when building.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from bench.models import tiny_llama
from bench.models.zoo import BUILDERS as ZOO_BUILDERS
from bench.models.zoo import CONTEXT as ZOO_CONTEXT

BUILTIN_MODELS: dict[str, Callable[..., Path]] = {
    "tiny-llama": tiny_llama.build,
    **ZOO_BUILDERS,
}
# context length (tokens) of each built-in model, known without building it (suites are checked against it)
BUILTIN_CONTEXT: dict[str, int] = {
    "tiny-llama": tiny_llama.CONTEXT,
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
    return spec
