"""llama.cpp's own HF -> GGUF converter and tokenizer vocabularies, at the installed runtime's exact revision.

llama-cpp-python has no wheel on PyPI: pip builds it from its source distribution, which vendors
llama.cpp at the revision the runtime is compiled from. That sdist also carries llama.cpp's converter
(`vendor/llama.cpp/convert_hf_to_gguf.py` with its `conversion/` package and `gguf-py/`) and real
tokenizers as vocabulary-only GGUF files (`models/ggml-vocab-*.gguf`). `source_dir()` unpacks those
parts once per installed llama-cpp-python version into `cache_dir()/llama-cpp-source/<version>/`,
from the sdist named by `$BENCH_LLAMA_CPP_SDIST` or else fetched with `pip download` from the package
index pip installs from (the same file the `gguf` extra built from). No model or tokenizer comes from
a hub. `convert(model_dir, out, outtype)` runs the converter as a child process and returns how long it
took and its peak RSS (the kernel's VmHWM of that process, read by a wrapper just before it exits).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from backends.base import MissingDependency
from backends.cached_build import run_python
from bench.core.cache import build_dir_atomically, cache_dir

EXTRA = "gguf"
SDIST_ENV = "BENCH_LLAMA_CPP_SDIST"  # path of a llama_cpp_python-<version>.tar.gz, for machines without an index
PARTS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "models/ggml-vocab-")  # what is unpacked
MANIFEST = "source.json"
CONVERTER_TIMEOUT_S = 3600.0

class SourceUnavailable(MissingDependency):
    """llama-cpp-python's source distribution cannot be had here (not installed, no index, no local sdist)."""


class ConverterFailed(RuntimeError):
    """llama.cpp's converter exited with an error (its last lines are in the message)."""


@dataclass(frozen=True)
class Conversion:
    """One run of llama.cpp's converter: output file, wall time and the converter process's peak RSS."""

    path: Path
    seconds: float
    peak_rss_bytes: int | None  # None where /proc has no VmHWM


def runtime_version() -> str:
    """Version of the installed llama-cpp-python, read from its metadata (no import of the runtime)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llama-cpp-python")
    except PackageNotFoundError:
        raise SourceUnavailable(f"llama-cpp-python is not installed: pip install 'bench[{EXTRA}]'") from None


def _fetch_sdist(into: Path, release: str, log: Callable[[str], None]) -> Path:
    local = os.environ.get(SDIST_ENV)
    if local:
        path = Path(local).expanduser()
        if not path.is_file():
            raise SourceUnavailable(f"{SDIST_ENV}={local}: no such file")
        return path
    log(f"fetching llama-cpp-python {release}'s source distribution (llama.cpp's converter and vocabularies)")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
               "-d", str(into), f"llama-cpp-python=={release}"]
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    found = sorted(into.glob("llama_cpp_python-*.tar.gz"))
    if proc.returncode != 0 or not found:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise SourceUnavailable(f"could not download llama-cpp-python {release}'s sdist ({tail}); set {SDIST_ENV} "
                                f"to a local llama_cpp_python-{release}.tar.gz")
    return found[0]


def _unpack(sdist: Path, dest: Path) -> int:
    """Unpack the converter parts of `sdist` under `dest`; returns how many files were written."""
    count = 0
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            _, _, rest = member.name.partition("/vendor/llama.cpp/")
            if not rest or not member.isfile() or not rest.startswith(PARTS):
                continue
            member.name = rest
            tar.extract(member, dest, filter="data")
            count += 1
    return count


def source_dir(log: Callable[[str], None] = print) -> Path:
    """Cached directory with llama.cpp's converter and vocabularies for the installed llama-cpp-python."""
    release = runtime_version()
    target = cache_dir() / "llama-cpp-source" / release

    def fill(tmp: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="sdist-") as download:
            sdist = _fetch_sdist(Path(download), release, log)
            files = _unpack(sdist, tmp)
        if not (tmp / "convert_hf_to_gguf.py").is_file():
            raise SourceUnavailable(f"{sdist.name} has no vendor/llama.cpp/convert_hf_to_gguf.py")
        (tmp / MANIFEST).write_text(json.dumps({"llama_cpp_python": release, "sdist": sdist.name, "files": files}))

    build_dir_atomically(target, fill, lambda path: (path / MANIFEST).is_file())
    return target


def vocab_names(log: Callable[[str], None] = print) -> list[str]:
    """Names of the tokenizers llama.cpp ships as vocabulary-only GGUF files (qwen2, llama-bpe, phi-3, ...)."""
    files = (source_dir(log) / "models").glob("ggml-vocab-*.gguf")
    return sorted(p.name[len("ggml-vocab-"):-len(".gguf")] for p in files)


def vocab_file(name: str, log: Callable[[str], None] = print) -> Path:
    """Path of llama.cpp's vocabulary-only GGUF `ggml-vocab-<name>.gguf`."""
    path = source_dir(log) / "models" / f"ggml-vocab-{name}.gguf"
    if not path.is_file():
        raise ValueError(f"llama.cpp ships no vocabulary {name!r}; valid names: {', '.join(vocab_names(log))}")
    return path


def convert(model_dir: Path, out: Path, outtype: str = "f32", log: Callable[[str], None] = print,
            timeout_s: float = CONVERTER_TIMEOUT_S) -> Conversion:
    """Convert the HF directory `model_dir` to GGUF `out` with llama.cpp's converter, in a child process."""
    converter = source_dir(log) / "convert_hf_to_gguf.py"
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}  # the converter uses its own gguf-py
    child = run_python([str(converter), str(model_dir), "--outfile", str(out), "--outtype", outtype], env=env,
                       timeout_s=timeout_s)
    if child.returncode != 0 or not out.is_file():
        raise ConverterFailed(f"llama.cpp's convert_hf_to_gguf.py failed on {model_dir} "
                              f"(exit {child.returncode}):\n{child.output[-1500:]}")
    return Conversion(out, child.seconds, child.peak_rss_bytes)
