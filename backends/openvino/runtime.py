"""OpenVINO backend: optimum-intel's `OVModelForCausalLM` on a cached IR export, driven by bench's greedy loop.

optimum-intel pins a transformers older than bench's, so its cases run in the side environment
`env:openvino` (`python -m bench env create openvino`). The IR is stateful: the KV cache lives in the
compiled model's state, reset by a forward without `past_key_values`; each later forward passes
optimum-intel's marker (`past_key_values=((),)`) to continue it. generate(): one forward over the
prompt batch, then one per token, argmax on the host. token_logits(): one forward over the sequence.

Compiled for the CPU plugin with `INFERENCE_NUM_THREADS` = the suite's threads, `PERFORMANCE_HINT:
LATENCY` and `INFERENCE_PRECISION_HINT` = `inference_precision` (f32 by default: on CPUs with AMX or
avx512_bf16 OpenVINO otherwise computes in bf16, and with 1 thread openvino 2026.4 crashes with a
floating-point exception while compiling there). The KV cache's state tensors are read back after a
generation to measure its bytes.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Literal

import numpy as np
from pydantic import Field

from backends.base import Backend, BackendDescription, BackendOptions, MissingDependency, TokenBatch, require
from backends.safetensors_header import stored_tensors
from bench.core.description import KVCacheInfo

EXTRA = "openvino"
ENV_HINT = "run it in its side env: give the variant `interpreter: env:openvino` and run: " \
           "python -m bench env create openvino"


class OpenVINOOptions(BackendOptions):
    device: Literal["cpu"] = Field("cpu", description="OpenVINO's CPU plugin (the host clock)")
    weights: Literal["fp32", "int8", "int4"] = Field("fp32", description="NNCF weight compression of the export")
    group_size: int = Field(64, ge=-1, description="int4 weights: weights per scale (-1: per channel)")
    inference_precision: Literal["f32", "bf16"] = Field(
        "f32", description="INFERENCE_PRECISION_HINT of the CPU plugin (bf16 on AMX/avx512_bf16 CPUs otherwise)")


class OpenVINO(Backend):
    name = "openvino"
    extra = EXTRA
    Options = OpenVINOOptions
    options: OpenVINOOptions

    def load(self, model_path: str) -> None:
        try:
            torch = require("torch", EXTRA, self.name)
            intel = require("optimum.intel", EXTRA, self.name)
            self._ov = require("openvino", EXTRA, self.name)
        except MissingDependency as exc:
            raise MissingDependency(f"{exc}; {ENV_HINT}") from None
        from backends.openvino.export import export

        self._torch = torch
        self.model_path = model_path  # tokenized with the source directory's tokenizer, like every backend
        self.export = export(model_path, self.options.weights, self.options.group_size)
        self.config = {"INFERENCE_NUM_THREADS": self.threads, "PERFORMANCE_HINT": "LATENCY",
                       "INFERENCE_PRECISION_HINT": self.options.inference_precision}
        self.model = intel.OVModelForCausalLM.from_pretrained(str(self.export.path), ov_config=self.config,
                                                              compile=True)
        self._kv_measured: dict = {}

    def _forward(self, ids, length: int, continue_cache: bool):
        torch = self._torch
        mask = torch.ones((ids.shape[0], length), dtype=torch.long)
        return self.model(input_ids=ids, attention_mask=mask, past_key_values=((),) if continue_cache else None).logits

    def generate(self, batch: TokenBatch, new_tokens: int, on_token: Callable[[], None]) -> TokenBatch:
        torch = self._torch
        length = len(batch[0])
        token = self._forward(torch.tensor(batch), length, False)[:, -1:, :].argmax(dim=-1)
        on_token()
        produced = [token]
        for _ in range(new_tokens - 1):
            length += 1
            token = self._forward(token, length, True)[:, -1:, :].argmax(dim=-1)
            on_token()
            produced.append(token)
        self._kv_measured = self._kv_state(len(batch), length)  # after the last mark
        return torch.cat(produced, dim=1).tolist()

    def _kv_state(self, sequences: int, tokens: int) -> dict:
        """Bytes of the KV cache state the compiled model holds, and the tokens it covers."""
        states = self.model.request.query_state()
        held = sum(int(np.asarray(s.state.data).nbytes) for s in states)
        bits = sorted({s.state.get_element_type().bitwidth for s in states})
        return {"bytes": held, "tokens": tokens, "sequences": sequences, "element_bits": bits[0] if len(bits) == 1
                else None, "state_element_types": sorted({s.state.get_element_type().get_type_name() for s in states})}

    def token_logits(self, ids: list[int]) -> np.ndarray:
        logits = self._forward(self._torch.tensor([ids]), len(ids), False)[0]
        return logits.float().numpy()

    def _weight_census(self) -> dict:
        """Weight elements in the IR by element type (int4 / int8 data, f16 scales, f32 rest)."""
        counts: Counter = Counter()
        for op in self.model.model.get_ordered_ops():
            if op.get_type_name() == "Constant":
                counts[op.get_output_element_type(0).get_type_name()] += int(np.prod(op.get_output_shape(0), dtype=int))
        return dict(counts.most_common())

    def describe(self) -> BackendDescription:
        import importlib.metadata

        census = self._weight_census()
        compiled = self.model.request.get_compiled_model()
        weights = self.options.weights
        return BackendDescription(
            mechanism="OpenVINO runtime (CPU plugin) via optimum-intel OVModelForCausalLM on a stateful IR export "
                      "(KV cache as model state); bench greedy loop, one forward per token",
            dtype="float32" if weights == "fp32" else f"{weights} weights (NNCF), "
                                                      f"{self.options.inference_precision} compute",
            device="cpu",
            threads=int(compiled.get_property("INFERENCE_NUM_THREADS")),
            model_size_bytes=self.export.weight_bytes(),
            n_parameters=sum(t.numel for t in stored_tensors(self.model_path or "")),  # the source checkpoint's
            quantization=None if weights == "fp32" else f"nncf-{weights}"
            + (f"-g{self.options.group_size}" if weights == "int4" else ""),
            versions={name: importlib.metadata.version(name) for name in
                      ("openvino", "optimum-intel", "nncf", "transformers", "torch")},
            **self.export.conversion(),
            kv_cache=KVCacheInfo(kind="openvino state", **self._kv_measured),
            details={**self.export.details(), "ov_config": self.config,
                     "inference_precision": compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name(),
                     "weight_elements_by_type": census,
                     "decode_loop": "bench greedy loop over OVModelForCausalLM.forward (stateful: "
                                    "past_key_values=((),) continues the cache)"},
        )

    def close(self) -> None:
        self.model = None
