"""Optional packages and hardware: the reasons a case is skipped rather than failed.

A case is *skipped* when it cannot apply here: a backend's optional package is absent
(`MissingDependency`, whose message names the pip extra) or the hardware cannot run it
(`NotSupportedHere`, e.g. a CUDA-only kernel on a CPU). Everything else that goes wrong is a failure.
"""
from __future__ import annotations

import importlib
from types import ModuleType


class MissingDependency(ImportError):
    """A backend's optional package is absent; the message names the pip extra to install."""


class NotSupportedHere(Exception):
    """The case cannot run on this machine's hardware (it is skipped with this reason, not failed)."""


def require(module: str, extra: str, who: str) -> ModuleType:
    """Import `module`, or raise MissingDependency naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependency(
            f"'{who}' needs the Python package '{module.split('.')[0]}' ({exc.msg}): pip install 'bench[{extra}]'"
        ) from exc
