"""onnxruntime-genai backend: the model builder's ONNX decoder run by `og.Generator` (KV cache in genai).

The model is exported once per precision and execution provider (see export.py). Decoding:
`append_tokens(prompts)` runs the prompt batch; each `generate_next_token()` picks the greedy
token (the first one from the prompt's logits, later ones after a one-token forward with the
cache) and `get_next_tokens()` brings it to the host, then on_token() is called. min_length =
max_length = prompt + new tokens, so exactly `new_tokens` are generated: genai suppresses EOS
until min_length (as transformers' min_new_tokens does), hence the tokens equal hf-eager's
greedy loop whenever EOS is not the argmax.
"""
from __future__ import annotations

import contextlib
import gc
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import model_validator

from backends.base import (
    Backend,
    BackendDescription,
    BackendOptions,
    MissingDependency,
    NotSupportedHere,
    TokenBatch,
)
from backends.onnx.export import EXTRA, OnnxOptions, export, model_bytes, require_all, versions
from backends.onnx.profile import ort_profile_ops

PRECISION_NOTES = {
    "fp32": "float32 weights and activations",
    "fp16": "float16 weights and activations",
    "int8": "int8 block-quantized weights by the model builder (MatMulNBits; bits, block_size and "
            "accuracy_level under graph.matmulnbits: accuracy_level 4 quantizes activations to int8 in the kernel)",
    "int4": "int4 block-quantized weights by the model builder (MatMulNBits; bits, block_size and "
            "accuracy_level under graph.matmulnbits: accuracy_level 4 quantizes activations to int8 in the kernel)",
    "int8-dynamic": "onnxruntime quantize_dynamic on the fp32 export: int8 weights, activations quantized "
                    "to uint8 at run time (DynamicQuantizeLinear + MatMulInteger)",
}

DTYPES = {"fp32": "float32", "fp16": "float16", "int8": "int8 weights (MatMulNBits)",
          "int4": "int4 weights (MatMulNBits)", "int8-dynamic": "int8 weights, uint8 dynamic activations"}


class GenaiOptions(OnnxOptions):
    precision: Literal["fp32", "fp16", "int8", "int4", "int8-dynamic"] = "fp32"

    @model_validator(mode="after")
    def _builder_supports(self):
        if self.precision == "fp16" and self.execution_provider == "cpu":
            raise ValueError("precision fp16 needs execution_provider cuda: the model builder's CPU precisions "
                             "are fp32, int8 and int4 (its fp16 CPU graph fails with batch > 1)")
        return self


class OnnxGenai(Backend):
    name = "onnx-genai"
    extra = EXTRA
    Options = GenaiOptions
    options: GenaiOptions

    @classmethod
    def prepare(cls, model_path: str, options: BackendOptions, log: Callable[[str], None]) -> None:
        """The CPU export of the variant's precision (a GPU export is made by its first load, under the cache lock)."""
        if isinstance(options, GenaiOptions) and options.execution_provider == "cpu":
            require_all(cls.name)  # nothing to export for a case that will be skipped
            export(model_path, options.precision, options.execution_provider)

    def load(self, model_path: str) -> None:
        og, _, _ = require_all(self.name)
        ep = self.options.execution_provider
        if ep == "cuda" and not og.is_cuda_available():
            raise MissingDependency(f"backend '{self.name}' with execution_provider cuda needs the CUDA build of "
                                    f"onnxruntime-genai and a GPU: pip uninstall onnxruntime-genai && "
                                    f"pip install onnxruntime-genai-cuda")
        self.model_path, self._og = model_path, og
        self.export = export(model_path, self.options.precision, ep)
        self.model = self._model()
        genai_model = self.export.genai_config()["model"]
        self.context_length = genai_model["context_length"]
        self.sliding_window = (genai_model["decoder"].get("sliding_window") or {}).get("window_size")

    def _model(self, **session_options):
        config = self._og.Config(str(self.export.path))
        config.clear_providers()
        if self.options.execution_provider == "cuda":
            config.append_provider("cuda")
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {
            "intra_op_num_threads": self.threads, "inter_op_num_threads": 1, **session_options}}}}))
        return self._og.Model(config)

    @contextlib.contextmanager
    def native_profile(self, out_dir: Path) -> Iterator[dict]:
        """ONNX Runtime's JSON profile of the decoder session, from a second model loaded with profiling on."""
        measured, self.model = self.model, self._model(enable_profiling=str(out_dir / "onnxruntime-genai"))
        summary: dict = {"profiler": "onnxruntime (genai session_options.enable_profiling)"}
        try:
            yield summary
        finally:
            self.model = measured  # dropping the profiled model writes its profile
            gc.collect()
        files = sorted(out_dir.glob("onnxruntime-genai*.json"))
        summary["ops"] = [op for path in files for op in ort_profile_ops(path)]

    def _generator(self, batch: TokenBatch, total_length: int):
        lengths = {len(seq) for seq in batch}
        if len(lengths) != 1:
            raise ValueError(f"{self.name} runs a batch of equal-length prompts (no padding); "
                             f"got lengths {sorted(lengths)}")
        if total_length > self.context_length:
            raise ValueError(f"{total_length} tokens exceed the model's context length {self.context_length}")
        if self.sliding_window and total_length > self.sliding_window:
            raise NotSupportedHere(
                f"onnxruntime-genai sizes this export's KV cache from its {self.sliding_window}-token sliding "
                f"window and fails once a sequence outgrows that cache (GroupQueryAttention: "
                f"\"total_sequence_length must equal past_sequence_length + kv_sequence_length\"), so bench "
                f"refuses sequences longer than the window ({total_length} tokens here)")
        params = self._og.GeneratorParams(self.model)
        params.set_search_options(do_sample=False, batch_size=len(batch), min_length=total_length,
                                  max_length=total_length)
        generator = self._og.Generator(self.model, params)
        generator.append_tokens(np.asarray(batch, dtype=np.int32))
        return generator

    def generate(self, batch: TokenBatch, new_tokens: int, on_token: Callable[[], None]) -> TokenBatch:
        generator = self._generator(batch, len(batch[0]) + new_tokens)
        steps = []
        for _ in range(new_tokens):
            generator.generate_next_token()
            steps.append(generator.get_next_tokens())
            on_token()
        return np.stack(steps, axis=1).tolist()

    def token_logits(self, ids: list[int]):
        logits = self._generator([ids], len(ids)).get_output("logits")
        return logits[0].astype(np.float32)

    def describe(self) -> BackendDescription:
        precision = self.options.precision
        return BackendDescription(
            mechanism="onnxruntime-genai og.Generator on the model builder's ONNX decoder "
                      "(GroupQueryAttention, KV cache managed by genai)",
            dtype=DTYPES[precision],
            device=self.options.execution_provider,
            threads=self.threads,  # ONNX Runtime intra-op threads (inter-op: 1)
            model_size_bytes=model_bytes(self.export.path),
            quantization=None if precision in ("fp32", "fp16") else PRECISION_NOTES[precision],
            versions=versions(),
            details={"precision": precision, "execution_provider": self.options.execution_provider,
                     "decode_loop": "a new og.Generator per call (its creation is inside TTFT and the logits "
                                    "time), append_tokens(prompts), then generate_next_token() + "
                                    "get_next_tokens() per token (greedy, min_length = max_length = prompt + "
                                    "new tokens)",
                     **self.export.details()},
            **self.export.conversion(),
        )

    def close(self) -> None:
        self.model = None
        gc.collect()
