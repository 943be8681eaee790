"""OpenVINO IR exports of a local HF decoder, made by optimum-intel and NNCF, built once and cached.

`export(model_dir, weights, group_size)` returns a directory with `openvino_model.xml` + `.bin` (a
stateful IR: the KV cache is model state, not inputs and outputs), its `config.json` and
`export.json` (what built it). The export is
`OVModelForCausalLM.from_pretrained(DIR, export=True, quantization_config=...)` then `save_pretrained`:

- fp32: no weight compression (`load_in_8bit=False`);
- int8: `OVWeightQuantizationConfig(bits=8)`, NNCF's int8 asymmetric per-channel weights, every
  MatMul and the embedding;
- int4: `OVWeightQuantizationConfig(bits=4, group_size=G)` (G = 64 by default), NNCF's int4
  asymmetric weights in groups of G; NNCF keeps the embedding and lm_head in int8 (its default for the
  first and last layers), so the bits per weight are above 4.

It runs as a child process (`python -m backends.openvino.export ...`, same interpreter), so the
export's torch model never counts in the case's memory; its wall time and peak RSS are recorded in the
manifest's `conversion` (backends/cached_build.py `run_python`). Exports live in
`cache_dir()/openvino/<model>-<weights>-<key>`, the key hashing the source model's files, the
weight settings and the library versions; built atomically under a lock (bench.core.cache).
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from backends.base import NotSupportedHere
from backends.cached_build import Built, build_cached, hf_source_files, known_gap, run_python
from bench.core.cache import cache_dir, files_digest
from bench.core.timing import Clock

WEIGHTS = ("fp32", "int8", "int4")
MANIFEST = "export.json"
DISTRIBUTIONS = ("optimum-intel", "openvino", "nncf", "transformers")
PROJECT_ROOT = Path(__file__).resolve().parents[2]
# optimum-intel's refusals of an architecture with these library versions (backends/cached_build.py
# known_gap): its exporter for some architectures caps the transformers version. The case is skipped.
EXPORT_GAPS = (
    ("The current version of Transformers does not allow for the export of the model",
     "optimum-intel refuses to export {architecture} with this transformers: {last_line}"),
)


class ExportError(RuntimeError):
    """The source cannot be exported (not a local HF directory, or the export failed)."""


@dataclass(frozen=True)
class Export(Built):
    @property
    def xml(self) -> Path:
        return self.path / "openvino_model.xml"

    def weight_bytes(self) -> int:
        """Bytes of the IR's weights file as stored (compressed weights, scales, zero points)."""
        return (self.path / "openvino_model.bin").stat().st_size

    def details(self) -> dict:
        return {"export_dir": str(self.path), "export_cached": self.cached, "export_seconds": self.seconds,
                "weight_compression": self.manifest["weight_compression"], "exported_by": self.manifest["call"]}


def versions() -> dict:
    return {name: importlib.metadata.version(name) for name in DISTRIBUTIONS}


def compression(weights: str, group_size: int) -> dict | None:
    """The OVWeightQuantizationConfig arguments for `weights`, or None for none."""
    if weights not in WEIGHTS:
        raise ExportError(f"unknown OpenVINO weights {weights!r}; valid: {', '.join(WEIGHTS)}")
    return {"fp32": None, "int8": {"bits": 8}, "int4": {"bits": 4, "group_size": group_size}}[weights]


def export(model_dir: str | Path, weights: str, group_size: int) -> Export:
    """The cached export of `model_dir` with `weights` compression, built if missing."""
    clock = Clock()
    clock.start()
    model_dir = Path(model_dir)
    settings = compression(weights, group_size)
    libs = versions()
    sources = hf_source_files(model_dir, ExportError, "the openvino export")
    key = files_digest(sources, weights, json.dumps(settings, sort_keys=True), json.dumps(libs, sort_keys=True))
    target = cache_dir() / "openvino" / f"{model_dir.name[:40]}-{weights}-{key}"

    def fill(tmp: Path) -> None:
        env = {**os.environ, "HF_HUB_OFFLINE": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}
        child = run_python(["-m", "backends.openvino.export", str(model_dir), str(tmp), json.dumps(settings)], env=env)
        if child.returncode != 0 or not (tmp / "openvino_model.xml").is_file():
            tail = "\n".join(child.output.splitlines()[-15:])
            if why := known_gap(tail, EXPORT_GAPS, model_dir):
                raise NotSupportedHere(f"{why} (optimum-intel {libs['optimum-intel']}, "
                                       f"transformers {libs['transformers']})")
            raise ExportError(f"OpenVINO export failed (exit {child.returncode}) on {model_dir} for {weights}:\n{tail}")
        manifest = {"source": str(model_dir), "key": key, "weights": weights, "weight_compression": settings,
                    "conversion": child.manifest(),
                    "versions": libs, "call": "optimum.intel.OVModelForCausalLM.from_pretrained(export=True, "
                    f"quantization_config=OVWeightQuantizationConfig(**{settings}))" if settings else
                    "optimum.intel.OVModelForCausalLM.from_pretrained(export=True, load_in_8bit=False)"}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))

    return build_cached(Export, target, MANIFEST, fill, clock)


def _export_main(source: str, out: str, settings_json: str) -> None:
    """The child process: export `source` to `out` with the given weight compression."""
    from optimum.intel import OVModelForCausalLM, OVWeightQuantizationConfig

    settings = json.loads(settings_json)
    kwargs = {"quantization_config": OVWeightQuantizationConfig(**settings)} if settings else {"load_in_8bit": False}
    model = OVModelForCausalLM.from_pretrained(source, export=True, compile=False, **kwargs)
    model.save_pretrained(out)


if __name__ == "__main__":
    _export_main(*sys.argv[1:4])
