"""ONNX exports of a local HF decoder for the ONNX Runtime backends, built once and cached.

`export(model_dir, precision, execution_provider)` returns a directory holding `model.onnx`
(+ `model.onnx.data`), `genai_config.json`, the tokenizer files and `export.json` (what built it):

- fp32 / fp16 / int8 / int4: onnxruntime-genai's model builder
  (`python -m onnxruntime_genai.models.builder -i DIR -o OUT -p PRECISION -e EP`), run as a child
  process so its torch import never counts in the case's own memory (its wall time and peak RSS are
  recorded in the manifest's `conversion`: backends/cached_build.py `run_python`). The graph has an explicit KV
  cache (`past_key_values.N.key/value` in, `present.N.key/value` out, GroupQueryAttention).
  int8 and int4 are the builder's block quantization of the weights (MatMulNBits; on the CPU its
  default accuracy_level 4 also quantizes activations to int8 inside the matmul kernel).
- int8-dynamic: `onnxruntime.quantization.quantize_dynamic` (int8 weights, activations quantized
  at run time: DynamicQuantizeLinear + MatMulInteger) applied to the fp32 export; same inputs,
  outputs and genai_config.json, so both onnx-genai and onnx-ort run it.

Exports live in `cache_dir()/onnx/<model>-<precision>-<ep>-<key>`, the key hashing the source
model's files, the precision, the EP and the library versions; they are built atomically under a
lock (bench.core.cache), so concurrent cases wait for one build.

Also here, what both ONNX backends share: their options base.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import field_validator

from backends.base import BackendOptions, NotSupportedHere, require
from backends.cached_build import Built, build_cached, hf_source_files, known_gap, run_python
from bench.core.cache import cache_dir, files_digest
from bench.core.timing import Clock

EXTRA = "onnx"
PRECISIONS = ("fp32", "fp16", "int8", "int4", "int8-dynamic")  # the first four by the model builder
MODEL_FILES = ("model.onnx", "model.onnx.data")
MANIFEST = "export.json"
BUILDER = "onnxruntime_genai.models.builder"
# ops that say how a graph computes its matmuls and attention (shown by describe())
_TELLING_OPS = ("MatMul", "MatMulNBits", "MatMulInteger", "DynamicQuantizeLinear", "GroupQueryAttention",
                "MultiHeadAttention")


BUILDER_UNSUPPORTED = "model is not currently supported"  # the model builder's message for an unknown architecture
# The model builder's refusals of an architecture with these library versions (backends/cached_build.py
# known_gap): (text in its output, why in words). The case is skipped with it.
BUILDER_GAPS = (
    (BUILDER_UNSUPPORTED, (f"onnxruntime-genai's model builder has no recipe for {{architecture}} "
                          f"(\"{BUILDER_UNSUPPORTED}\")")),
    ("KeyError: 'rope_type'", ("onnxruntime-genai's model builder reads a single RoPE config "
                              "(rope_parameters['rope_type']), but transformers 5 stores {architecture}'s RoPE "
                              "per layer type (full and sliding attention): the builder stops with KeyError "
                              "'rope_type'")),
)


class ExportError(RuntimeError):
    """The source cannot be exported (not a local HF directory, or the builder failed)."""


class OnnxOptions(BackendOptions):
    """Options shared by the ONNX Runtime backends."""

    execution_provider: Literal["cpu", "cuda"] = "cpu"

    @field_validator("device")
    @classmethod
    def _host_clock(cls, value):
        if value != "cpu":
            raise ValueError("ONNX Runtime backends return every step's output to the host, where the clock "
                             "reads it; choose the GPU with execution_provider: cuda, not device")
        return value


@dataclass(frozen=True)
class Export(Built):
    @property
    def model_file(self) -> Path:
        return self.path / "model.onnx"

    def genai_config(self) -> dict:
        return json.loads((self.path / "genai_config.json").read_text())

    def details(self) -> dict:
        """What the description's `details` say about the export (its weight bytes are model_bytes())."""
        return {"export_dir": str(self.path), "export_cached": self.cached, "export_seconds": self.seconds,
                "graph": graph_summary(self.model_file), "exported_by": self.manifest["tool"]}


def require_all(backend: str) -> tuple:
    """(onnxruntime_genai, onnxruntime, onnx), or MissingDependency naming `backend` and bench[onnx].

    Both backends need all three: the genai model builder makes every graph, onnx reads it."""
    return tuple(require(module, EXTRA, backend) for module in ("onnxruntime_genai", "onnxruntime", "onnx"))


def versions() -> dict:
    """Versions of the libraries that build and run the exports (part of the cache key)."""
    og, ort, onnx = require_all("onnx")
    return {"onnxruntime_genai": og.__version__, "onnxruntime": ort.__version__, "onnx": onnx.__version__}


def model_bytes(path: Path) -> int:
    """Bytes of the ONNX graph and its external weights."""
    return sum((path / name).stat().st_size for name in MODEL_FILES if (path / name).is_file())


def graph_summary(model_file: Path) -> dict:
    """Counts of the ops that tell how the graph computes, and the MatMulNBits quantization settings."""
    onnx = require("onnx", EXTRA, "onnx")
    graph = onnx.load(str(model_file), load_external_data=False).graph
    counts = Counter(node.op_type for node in graph.node if node.op_type in _TELLING_OPS)
    nbits = {tuple((a.name, onnx.helper.get_attribute_value(a)) for a in node.attribute
                   if a.name in ("bits", "block_size", "accuracy_level"))
             for node in graph.node if node.op_type == "MatMulNBits"}
    summary: dict = {"ops": dict(sorted(counts.items()))}
    if nbits:
        summary["matmulnbits"] = [dict(settings) for settings in sorted(nbits)]
    return summary


def _run_builder(model_dir: Path, out: Path, precision: str, execution_provider: str) -> dict:
    args = ["-i", str(model_dir), "-p", precision, "-e", execution_provider]
    with tempfile.TemporaryDirectory(prefix="ortgenai-builder-") as scratch:
        child = run_python(["-m", BUILDER, *args, "-o", str(out), "-c", scratch], cwd=scratch,
                           env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if child.returncode != 0 or not (out / "model.onnx").is_file():
        tail = "\n".join(child.output.splitlines()[-15:])
        if why := known_gap(tail, BUILDER_GAPS, model_dir):
            raise NotSupportedHere(f"{why} (onnxruntime-genai {versions()['onnxruntime_genai']})")
        raise ExportError(f"onnxruntime-genai model builder failed (exit {child.returncode}) on {model_dir} "
                          f"for {precision}/{execution_provider}:\n{tail}")
    return {"tool": {"call": f"python -m {BUILDER} {' '.join(args)}"}, "conversion": child.manifest()}


def _quantize_dynamic(fp32: Path, out: Path) -> dict:
    quantization = require("onnxruntime.quantization", EXTRA, "onnx")
    settings = {"weight_type": "QInt8", "per_channel": False, "reduce_range": False}
    clock = Clock()
    clock.start()
    quantization.quantize_dynamic(str(fp32 / "model.onnx"), str(out / "model.onnx"),
                                  weight_type=quantization.QuantType.QInt8, per_channel=False,
                                  reduce_range=False, use_external_data_format=True)
    for item in fp32.iterdir():  # genai_config.json and tokenizer files: the interface is unchanged
        if item.name not in (*MODEL_FILES, MANIFEST) and item.is_file():
            shutil.copy2(item, out / item.name)
    clock.mark()
    # in this process: its peak RSS is not the quantization's alone, so none is recorded
    return {"tool": {"call": "onnxruntime.quantization.quantize_dynamic", **settings, "source_export": str(fp32)},
            "conversion": {"seconds": clock.stamps_ns()[-1] / 1e9, "peak_rss_bytes": None,
                           "peak_rss": "not measured: quantize_dynamic runs in the process that asked for it"}}


def export(model_dir: str | Path, precision: str, execution_provider: str = "cpu") -> Export:
    """The cached export of `model_dir` at `precision` for `execution_provider`, built if missing."""
    if precision not in PRECISIONS:
        raise ExportError(f"unknown ONNX precision {precision!r}; valid values: {', '.join(PRECISIONS)}")
    clock = Clock()
    clock.start()
    model_dir = Path(model_dir)
    libs = versions()
    key = files_digest(hf_source_files(model_dir, ExportError, "the ONNX export"), precision, execution_provider,
                       json.dumps(libs, sort_keys=True))
    target = cache_dir() / "onnx" / f"{model_dir.name[:40]}-{precision}-{execution_provider}-{key}"

    def fill(tmp: Path) -> None:
        if precision == "int8-dynamic":
            made = _quantize_dynamic(export(model_dir, "fp32", execution_provider).path, tmp)
        else:
            made = _run_builder(model_dir, tmp, precision, execution_provider)
        manifest = {"source": str(model_dir), "key": key, "precision": precision,
                    "execution_provider": execution_provider, "versions": libs, **made}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))

    return build_cached(Export, target, MANIFEST, fill, clock)
