"""llm-compressor checkpoints of a local HF model (GPTQ, AWQ), built once in a side environment and cached.

`checkpoint(model_dir, method, who)` returns a directory holding a compressed-tensors checkpoint
(`config.json` with its `quantization_config`, `model.safetensors` with packed int4 weights and
scales, the source's tokenizer files) and `checkpoint.json` (how it was made):

- the calibration set is bench's: 64 pieces of 256 tokens from the built-in corpus's train split
  (`python -m bench.models.calibration`, run as a tool: backends do not import bench);
- the job is `oneshot(model, dataset, recipe=<Modifier>(targets="Linear", scheme, ignore=["lm_head"]))`
  (backends/llmcompressor/oneshot.py) in the `llmcompressor` side environment (`python -m bench env
  create llmcompressor`), whose transformers pin clashes with bench's; run as a child process, so its
  memory never counts in the case's;
- GPTQ builds on the CPU in seconds. AWQ cannot: llm-compressor 0.14's AWQModifier pins its activation
  cache (`pin_memory()`), which raises without an accelerator. It is built on CUDA; on a machine
  without one, and with none cached, the case is skipped with that reason.

Checkpoints live in `cache_dir()/compressed/<model>-<method>-<key>`, the key hashing the source model's
files, the method, the calibration ids and the side env's library versions; built atomically under a
lock (bench.core.cache), like the ONNX and GGUF caches.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from backends.base import MissingDependency, NotSupportedHere, require
from backends.cached_build import Built, build_cached, hf_source_files
from bench.core.cache import cache_dir, files_digest
from bench.core.sideenv import MARKER, create_command, env_dir, env_python
from bench.core.timing import Clock

ENV = "llmcompressor"
MANIFEST = "checkpoint.json"
CALIBRATION_SAMPLES, CALIBRATION_TOKENS = 64, 256
PROJECT_ROOT = Path(__file__).resolve().parents[2]
AWQ_ON_CPU = ("llm-compressor 0.14's AWQModifier pins its activation cache to page-locked memory (pin_memory()), "
              "which raises 'Cannot access accelerator device when none is available' on a CPU-only machine")


@dataclass(frozen=True)
class Method:
    modifier: str  # llm-compressor modifier class
    scheme: str  # compressed-tensors preset scheme
    build_device: str  # where oneshot runs: "cpu", or "cuda" where it cannot run on a CPU
    why_device: str = ""


METHODS = {
    "gptq-w4a16": Method("GPTQModifier", "W4A16", "cpu"),
    "awq-w4a16": Method("AWQModifier", "W4A16", "cuda", AWQ_ON_CPU),
}


class CheckpointError(RuntimeError):
    """The llm-compressor job failed; the message has the tail of its output."""


@dataclass(frozen=True)
class Checkpoint(Built):
    def file_bytes(self) -> int:
        """Bytes of the checkpoint's weight files as stored."""
        return sum(p.stat().st_size for p in self.path.glob("*.safetensors"))

    def details(self) -> dict:
        return {"checkpoint_dir": str(self.path), "checkpoint_cached": self.cached,
                "checkpoint_seconds": self.seconds, "checkpoint_file_bytes": self.file_bytes(),
                "made_by": {k: self.manifest[k] for k in ("method", "modifier", "scheme", "build_device",
                                                           "calibration", "versions", "oneshot_seconds")}}


def _run(command: list[str], what: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])),
           "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(command, check=False, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
        raise CheckpointError(f"{what} failed (exit {proc.returncode}): {' '.join(command)}\n{tail}")
    return proc.stdout


def calibration(model_dir: Path, out: Path) -> dict:
    """Write bench's calibration set for `model_dir` to `out`; return it without the ids."""
    _run([sys.executable, "-m", "bench.models.calibration", str(model_dir), "--samples", str(CALIBRATION_SAMPLES),
          "--tokens", str(CALIBRATION_TOKENS), "--out", str(out)], "making the calibration set")
    data = json.loads(out.read_text())
    return {k: v for k, v in data.items() if k != "ids"}


def _cuda_here() -> bool:
    try:
        return bool(require("torch", "hf", "llm-compressor").cuda.is_available())
    except MissingDependency:
        return False


GROUP_SIZES = {"W4A16": 128}  # compressed-tensors presets: weights quantized in groups of this many input features


def _check_group_size(model_dir: Path, spec: Method) -> None:
    """Refuse (skip) a model whose hidden size is not a multiple of the scheme's group size: llm-compressor
    would fail inside its observer ("Provided sizes [-1, 128] don't multiply up ...")."""
    group = GROUP_SIZES.get(spec.scheme)
    config_path = model_dir / "config.json"
    if group is None or not config_path.is_file():
        return
    config = json.loads(config_path.read_text())
    hidden = config.get("hidden_size") or config.get("n_embd")
    if isinstance(hidden, int) and hidden % group:
        raise NotSupportedHere(f"{spec.scheme} quantizes weights in groups of {group} input features; this "
                               f"model's hidden size {hidden} is not a multiple of {group}")


def checkpoint(model_dir: str | Path, method: str, who: str, threads: int = 1) -> Checkpoint:
    """The cached `method` checkpoint of `model_dir`, built if missing (see the module docstring)."""
    if method not in METHODS:
        raise CheckpointError(f"unknown llm-compressor method {method!r}; valid: {', '.join(METHODS)}")
    spec = METHODS[method]
    _check_group_size(Path(model_dir), spec)
    python = env_python(ENV)
    if python is None:
        raise MissingDependency(f"'{who}' makes {method} checkpoints with llm-compressor in its side environment "
                                f"'{ENV}', which does not exist; create it with: {create_command(ENV)}")
    clock = Clock()
    clock.start()
    model_dir = Path(model_dir)
    versions = json.loads((env_dir(ENV) / MARKER).read_text())["versions"]
    with tempfile.TemporaryDirectory(prefix="bench-calibration-") as scratch:
        ids_file = Path(scratch) / "calibration.json"
        calib = calibration(model_dir, ids_file)
        sources = hf_source_files(model_dir, CheckpointError, "llm-compressor")
        key = files_digest(sources, method, spec.modifier, spec.scheme, calib["sha256"],
                           json.dumps(versions, sort_keys=True))
        target = cache_dir() / "compressed" / f"{model_dir.name[:40]}-{method}-{key}"
        if not (target / MANIFEST).is_file() and spec.build_device == "cuda" and not _cuda_here():
            raise NotSupportedHere(f"{method} checkpoints are built on CUDA ({spec.why_device}); none is cached "
                                   f"for this model ({target})")

        def fill(tmp: Path) -> None:
            job = {"source": str(model_dir), "out": str(tmp), "modifier": spec.modifier, "scheme": spec.scheme,
                   "device": spec.build_device, "threads": threads, "calibration": str(ids_file)}
            (Path(scratch) / "job.json").write_text(json.dumps(job))
            command = [str(python), "-m", "backends.llmcompressor.oneshot", str(Path(scratch) / "job.json")]
            result = json.loads(_run(command, f"llm-compressor {method}").strip().splitlines()[-1])
            manifest = {"source": str(model_dir), "key": key, "method": method, "modifier": spec.modifier,
                        "scheme": spec.scheme, "build_device": spec.build_device, "calibration": calib,
                        "versions": versions, "call": f"python -m backends.llmcompressor.oneshot (env {ENV})",
                        **result}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))

        return build_cached(Checkpoint, target, MANIFEST, fill, clock)
