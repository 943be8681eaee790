"""Plain onnxruntime backend: an `InferenceSession` on the exported decoder, KV cache driven by bench.

The graph is the onnxruntime-genai model builder's fp32 export (see export.py), or that
graph after `onnxruntime.quantization.quantize_dynamic` (int8 weights, dynamic uint8
activations). It takes `past_key_values.N.key/value` and returns `present.N.key/value`; the loop
here runs the prompt once with an empty cache, then one `session.run` per token feeding the
presents back as pasts, and takes the argmax on the host.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import numpy as np

from backends.base import Backend, BackendDescription, BackendOptions, MissingDependency, TokenBatch
from backends.onnx.export import EXTRA, OnnxOptions, export, model_bytes, require_all, versions
from backends.onnx.profile import ort_profile_ops

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
QUANTIZATION_NOTES = {
    "none": "float32 weights and activations",
    "int8-dynamic": "onnxruntime quantize_dynamic: int8 weights, activations quantized to uint8 at run time "
                    "(DynamicQuantizeLinear + MatMulInteger)",
}
_NUMPY_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16"}


class OrtOptions(OnnxOptions):
    quantization: Literal["none", "int8-dynamic"] = "none"


class OnnxOrt(Backend):
    name = "onnx-ort"
    extra = EXTRA
    Options = OrtOptions
    options: OrtOptions

    @classmethod
    def prepare(cls, model_path: str, options: BackendOptions, log: Callable[[str], None]) -> None:
        """The CPU export of the variant's precision (a GPU export is made by its first load, under the cache lock)."""
        if isinstance(options, OrtOptions) and options.execution_provider == "cpu":
            require_all(cls.name)  # nothing to export for a case that will be skipped
            precision = "fp32" if options.quantization == "none" else options.quantization
            export(model_path, precision, options.execution_provider)

    def load(self, model_path: str) -> None:
        _, ort, _ = require_all(self.name)
        provider = PROVIDERS[self.options.execution_provider]
        if provider not in ort.get_available_providers():
            raise MissingDependency(f"backend '{self.name}' needs {provider}, which this onnxruntime build lacks "
                                    f"(has {', '.join(ort.get_available_providers())}): pip uninstall "
                                    f"onnxruntime && pip install onnxruntime-gpu")
        self.model_path = model_path
        precision = "fp32" if self.options.quantization == "none" else self.options.quantization
        self.export = export(model_path, precision, self.options.execution_provider)
        self._ort, self._provider = ort, provider
        self.session = self._session()
        decoder = self.export.genai_config()["model"]["decoder"]
        self._layers, self._kv_heads = decoder["num_hidden_layers"], decoder["num_key_value_heads"]
        self._head_size = decoder["head_size"]
        self._past_names = [decoder["inputs"][kind] % layer for layer in range(self._layers)
                            for kind in ("past_key_names", "past_value_names")]
        self._present_names = [decoder["outputs"][kind] % layer for layer in range(self._layers)
                               for kind in ("present_key_names", "present_value_names")]
        past_type = {i.name: i.type for i in self.session.get_inputs()}[self._past_names[0]]
        self._past_dtype = _NUMPY_DTYPES[past_type]
        self._output_names = [decoder["outputs"]["logits"], *self._present_names]
        self._ids_name, self._mask_name = decoder["inputs"]["input_ids"], decoder["inputs"]["attention_mask"]

    def _session(self, profile_prefix: str | None = None):
        session_options = self._ort.SessionOptions()
        session_options.intra_op_num_threads = self.threads
        session_options.inter_op_num_threads = 1
        if profile_prefix:
            session_options.enable_profiling = True
            session_options.profile_file_prefix = profile_prefix
        return self._ort.InferenceSession(str(self.export.model_file), session_options, providers=[self._provider])

    @contextlib.contextmanager
    def native_profile(self, out_dir: Path) -> Iterator[dict]:
        """ONNX Runtime's JSON profile, from a second session created with profiling on."""
        measured, self.session = self.session, self._session(str(out_dir / "onnxruntime"))
        summary: dict = {"profiler": "onnxruntime (SessionOptions.enable_profiling)"}
        try:
            yield summary
        finally:
            profile_file, self.session = self.session.end_profiling(), measured
        summary["ops"] = ort_profile_ops(profile_file)

    def _run(self, tokens, past: list):
        """One forward: logits [B, T, vocab] and the presents for the next step."""
        batch, length = tokens.shape
        feed = {self._ids_name: tokens, self._mask_name: np.ones((batch, past[0].shape[2] + length), np.int64)}
        feed.update(zip(self._past_names, past))
        logits, *present = self.session.run(self._output_names, feed)
        return logits, present

    def _empty_cache(self, batch: int) -> list:
        shape = (batch, self._kv_heads, 0, self._head_size)
        return [np.zeros(shape, self._past_dtype) for _ in self._past_names]

    def _tokens(self, batch: TokenBatch):
        lengths = {len(seq) for seq in batch}
        if len(lengths) != 1:
            raise ValueError(f"{self.name} runs a batch of equal-length prompts (no padding); "
                             f"got lengths {sorted(lengths)}")
        return np.asarray(batch, dtype=np.int64)

    def _prefill(self, batch: TokenBatch):
        return self._run(self._tokens(batch), self._empty_cache(len(batch)))

    def generate(self, batch: TokenBatch, new_tokens: int, on_token: Callable[[], None]) -> TokenBatch:
        logits, past = self._prefill(batch)
        token = logits[:, -1].argmax(-1)[:, None]
        on_token()
        produced = [token]
        for _ in range(new_tokens - 1):
            logits, past = self._run(token, past)
            token = logits[:, -1].argmax(-1)[:, None]
            on_token()
            produced.append(token)
        return np.concatenate(produced, axis=1).tolist()

    def token_logits(self, ids: list[int]):
        logits, _ = self._prefill([ids])
        return logits[0].astype(np.float32)

    def describe(self) -> BackendDescription:
        quantized = self.options.quantization != "none"
        return BackendDescription(
            mechanism="onnxruntime.InferenceSession on the onnxruntime-genai model builder's fp32 ONNX decoder "
                      "(GroupQueryAttention)" + (" after quantize_dynamic" if quantized else ""),
            dtype="int8 weights, uint8 dynamic activations" if quantized else "float32",
            device=self.options.execution_provider,
            threads=self.threads,  # ONNX Runtime intra-op threads (inter-op: 1)
            model_size_bytes=model_bytes(self.export.path),
            quantization=QUANTIZATION_NOTES[self.options.quantization] if quantized else None,
            versions=versions(),
            details={"execution_provider": self.options.execution_provider,
                     "providers": self.session.get_providers(),
                     "decode_loop": "bench greedy KV-cache loop: one session.run on the prompt with an empty cache, "
                                    "then one per token with past_key_values = previous present (argmax on the host)",
                     **self.export.details()},
            **self.export.conversion(),
        )

    def close(self) -> None:
        self.session = None
