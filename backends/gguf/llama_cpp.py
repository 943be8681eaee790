"""llama.cpp backend (llama-cpp-python's low-level API) on a GGUF file: f32, f16 or llama.cpp quants.

`model` is an HF Llama directory (converted and cached by `backends.gguf.convert` at the chosen
`quant`; prompts use the HF tokenizer, so ids match every other backend) or an existing `.gguf`
file (run as is, tokenized by llama.cpp's own tokenizer). Decoding is bench's greedy loop: one
`llama_decode` of the prompt batch, then one per step, argmax over the returned logits (no
sampler chain, EOS ignored). A batch of B prompts is one multi-sequence `llama_batch` (sequence
ids 0..B-1, each with its own KV cells), decoded together. Per-position logits for perplexity come
from one `llama_decode` with an output at every position (what `Llama(logits_all=True).eval()`
does underneath).
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from backends.base import Backend, BackendDescription, BackendOptions, TokenBatch, require
from bench.core.description import KVCacheInfo

EXTRA = "gguf"
KVType = Literal["f32", "f16", "q8_0", "q4_0"]
KV_BITS = {"f32": 32.0, "f16": 16.0, "q8_0": 8.5, "q4_0": 4.5}  # per element, block scales included (32 per block)


class LlamaCppOptions(BackendOptions):
    device: Literal["cpu"] = Field("cpu", description="host clock; GPU offload is n_gpu_layers")
    quant: Literal["f32", "f16", "q8_0", "q4_0", "q4_k_m"] = Field(
        "f16", description="GGUF weight type when converting an HF directory")
    n_gpu_layers: int = Field(0, ge=-1, description="layers offloaded to the GPU (-1: all; needs a GPU build)")
    n_ctx: int | None = Field(None, ge=16, description="context length (KV cells) per sequence; "
                              "default: the model's training context, at most 4096")
    type_k: KVType | None = Field(None, description="KV cache type of the keys (default: llama.cpp's, f16)")
    type_v: KVType | None = Field(None, description="KV cache type of the values (default: llama.cpp's, f16); "
                                  "a quantized V cache needs flash attention, which llama.cpp then enables")


class LlamaCpp(Backend):
    name = "llama-cpp"
    extra = EXTRA
    Options = LlamaCppOptions
    options: LlamaCppOptions
    _ctx: Any  # llama_context pointer (ctypes), one per sequence count
    _batch: Any  # llama_batch sized for that context
    _n_seq: int
    _n_batch: int

    @classmethod
    def file_for_server(cls, model_dir: str, quant: str) -> tuple[Path, bool, str]:
        """(GGUF file of an HF directory at `quant`, whether llama.cpp's extra CPU buffer types work on it here,
        why): what llama.cpp's OpenAI server (bench/serving) runs, with the same conversion and crash probe."""
        from backends.gguf.convert import gguf_file
        from backends.gguf.cpu_probe import extra_buffers_work

        llama_cpp = require("llama_cpp", EXTRA, cls.name)
        path = gguf_file(model_dir, quant)
        return (path, *extra_buffers_work(path, llama_cpp.__version__))

    @classmethod
    def prepare(cls, model_path: str, options: BackendOptions, log: Callable[[str], None]) -> None:
        """The GGUF file at the variant's quant (an HF directory only: a .gguf file needs nothing)."""
        from backends.gguf.convert import gguf_file

        require("llama_cpp", EXTRA, cls.name)  # nothing to convert for a case that will be skipped
        source = Path(model_path)
        if isinstance(options, LlamaCppOptions) and not (source.suffix == ".gguf" and source.is_file()):
            gguf_file(source, options.quant, log)

    def load(self, model_path: str) -> None:
        self._lib = llama_cpp = require("llama_cpp", EXTRA, self.name)
        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # llama.cpp's info logs: errors only
        source = Path(model_path)
        if source.suffix == ".gguf" and source.is_file():
            if "quant" in self.options.model_fields_set:
                raise ValueError(f"llama-cpp backend: model {source} is already a GGUF file; "
                                 f"the quant option applies only to HF model directories")
            self.gguf_path, self.hf_dir, self.gguf_built_in_load = source, None, False
        else:
            from backends.gguf.convert import gguf_file

            built: list[str] = []

            def log(message: str) -> None:
                built.append(message)
                print(message, flush=True)

            self.gguf_path, self.hf_dir = gguf_file(source, self.options.quant, log), source
            self.gguf_built_in_load = bool(built)
        self.model_path = str(self.hf_dir or self.gguf_path)  # the base class tokenizes with an HF dir
        if self.options.n_gpu_layers != 0 and not llama_cpp.llama_supports_gpu_offload():
            raise ValueError("llama-cpp backend: this llama-cpp-python build has no GPU offload; "
                             "use n_gpu_layers: 0 (or install a CUDA/Metal build)")
        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = self.options.n_gpu_layers
        from backends.gguf.cpu_probe import extra_buffers_work

        self.extra_buffers, self.extra_buffers_reason = extra_buffers_work(self.gguf_path, llama_cpp.__version__)
        params.use_extra_bufts = self.extra_buffers
        self._model = llama_cpp.llama_model_load_from_file(str(self.gguf_path).encode(), params)
        if not self._model:
            raise RuntimeError(f"llama.cpp could not load {self.gguf_path}")
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self.n_ctx = self.options.n_ctx or min(llama_cpp.llama_model_n_ctx_train(self._model), 4096)
        self._ctx = self._batch = None
        self._context(1)

    # ------------------------------------------------------------ context and batches

    def _context(self, n_seq: int):
        """A context with `n_seq` sequences of n_ctx KV cells each (re-created when n_seq changes)."""
        if self._ctx is not None and self._n_seq == n_seq:
            return self._ctx
        self._free_context()
        lib = self._lib
        params = lib.llama_context_default_params()
        params.n_ctx = self.n_ctx * n_seq
        params.n_batch = params.n_ctx  # a whole prompt batch (or perplexity window) in one llama_decode
        params.n_ubatch = min(512, params.n_ctx)
        params.n_seq_max = n_seq
        params.n_outputs_max_per_seq = 0  # 0 = no per-sequence cap: per-position logits need one per token
        params.n_threads = params.n_threads_batch = self.threads
        params.no_perf = not getattr(self, "_perf_counters", False)  # on only inside native_profile
        for name in ("type_k", "type_v"):  # set only when asked: the default context stays llama.cpp's
            if getattr(self.options, name) is not None:
                setattr(params, name, getattr(lib, f"GGML_TYPE_{getattr(self.options, name).upper()}"))
        self._ctx = lib.llama_init_from_model(self._model, params)
        if not self._ctx:
            raise RuntimeError(f"llama.cpp could not create a context for {n_seq} sequences of "
                               f"{self.n_ctx} tokens")
        self._batch = lib.llama_batch_init(params.n_batch, 0, 1)
        self._n_seq, self._n_batch = n_seq, params.n_batch
        return self._ctx

    def _decode(self, tokens: list[int], positions: list[int], seqs: list[int], outputs: list[bool]) -> None:
        if len(tokens) > self._n_batch:
            raise ValueError(f"llama-cpp backend: {len(tokens)} tokens exceed the context "
                             f"({self._n_batch}); raise n_ctx")
        batch = self._batch
        batch.n_tokens = len(tokens)
        for i, (token, pos, seq, out) in enumerate(zip(tokens, positions, seqs, outputs)):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, pos, 1, int(out)
            batch.seq_id[i][0] = seq
        status = self._lib.llama_decode(self._ctx, batch)
        if status != 0:
            raise RuntimeError(f"llama_decode failed with status {status}")

    def _logits_row(self, batch_index: int) -> np.ndarray:
        pointer = self._lib.llama_get_logits_ith(self._ctx, batch_index)
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,))

    def _check_fits(self, n_tokens: int) -> None:
        if n_tokens > self.n_ctx:
            raise ValueError(f"llama-cpp backend: a sequence of {n_tokens} tokens does not fit "
                             f"n_ctx={self.n_ctx}; raise n_ctx")

    def _prefill(self, batch: TokenBatch) -> list[int]:
        """Decode every prompt as its own sequence; return the batch index of each prompt's last token."""
        self._context(len(batch))
        self._lib.llama_memory_clear(self._lib.llama_get_memory(self._ctx), True)
        tokens: list[int] = []
        positions: list[int] = []
        seqs: list[int] = []
        outputs: list[bool] = []
        last: list[int] = []
        for seq, prompt in enumerate(batch):
            tokens += prompt
            positions += range(len(prompt))
            seqs += [seq] * len(prompt)
            outputs += [False] * (len(prompt) - 1) + [True]
            last.append(len(tokens) - 1)
        self._decode(tokens, positions, seqs, outputs)
        return last

    # ------------------------------------------------------------ the backend protocol

    def generate(self, batch: TokenBatch, new_tokens: int, on_token: Callable[[], None]) -> TokenBatch:
        self._check_fits(max(len(p) for p in batch) + new_tokens)
        rows = self._prefill(batch)  # batch index of each sequence's logits
        seqs = list(range(len(batch)))
        every = [True] * len(batch)
        produced: TokenBatch = [[] for _ in batch]
        for step in range(new_tokens):
            tokens = [int(self._logits_row(row).argmax()) for row in rows]
            on_token()
            for out, token in zip(produced, tokens):
                out.append(token)
            if step + 1 < new_tokens:
                self._decode(tokens, [len(p) + step for p in batch], seqs, every)
                rows = seqs
        self._kv_measured = self._kv_state(batch, new_tokens)  # after the last mark
        return produced

    def _kv_state(self, batch: TokenBatch, new_tokens: int) -> dict:
        """Bytes of the KV cache rows the sequences hold: llama.cpp's serialized size of each sequence's state."""
        lib = self._lib
        held = sum(lib.llama_state_seq_get_size(self._ctx, seq) for seq in range(len(batch)))
        return {"bytes": int(held), "tokens": len(batch[0]) + new_tokens - 1, "sequences": len(batch),
                "measured_as": "llama_state_seq_get_size summed over the sequences (their KV rows plus a few "
                               "bytes of cell metadata)"}

    def token_logits(self, ids: list[int]) -> np.ndarray:
        self._check_fits(len(ids))
        self._context(1)
        self._lib.llama_memory_clear(self._lib.llama_get_memory(self._ctx), True)
        self._decode(ids, list(range(len(ids))), [0] * len(ids), [True] * len(ids))
        pointer = self._lib.llama_get_logits(self._ctx)
        return np.ctypeslib.as_array(pointer, shape=(len(ids), self.n_vocab)).copy()

    def tokenize(self, text: str) -> list[int]:
        if self.hf_dir is not None:
            return super().tokenize(text)
        data = text.encode()
        capacity = len(data) + 16
        tokens = (ctypes.c_int32 * capacity)()
        n = self._lib.llama_tokenize(self._vocab, data, len(data), tokens, capacity, False, False)
        if n < 0:
            raise RuntimeError(f"llama_tokenize needs {-n} tokens, more than {capacity}")
        return list(tokens[:n])

    def describe(self) -> BackendDescription:
        from backends.gguf.convert import conversion_cost

        lib = self._lib
        desc = ctypes.create_string_buffer(256)
        lib.llama_model_desc(self._model, desc, len(desc))
        ftype = lib.llama_ftype_name(lib.llama_model_ftype(self._model))
        self._context(1)  # the threads are read off a live context
        offload = self.options.n_gpu_layers
        return BackendDescription(
            mechanism="llama.cpp via llama-cpp-python low-level API: bench greedy loop over llama_decode with argmax "
                      "of the logits; a batch is one multi-sequence llama_batch",
            dtype=ftype.decode() if ftype else "unknown",
            device="cpu" if offload == 0 else f"cpu + gpu offload of {offload} layers",
            threads=lib.llama_n_threads(self._ctx),
            model_size_bytes=self.gguf_path.stat().st_size,
            n_parameters=lib.llama_model_n_params(self._model),
            quantization=self.options.quant if self.hf_dir is not None and self.options.quant.startswith("q") else None,
            versions={"llama_cpp_python": lib.__version__},
            **conversion_cost(self.gguf_path),
            kv_cache=KVCacheInfo(kind=f"K {self.options.type_k or 'f16'}, V {self.options.type_v or 'f16'}",
                                 element_bits=(KV_BITS[self.options.type_k or "f16"]
                                               + KV_BITS[self.options.type_v or "f16"]) / 2,
                                 **getattr(self, "_kv_measured", {})),
            details={
                "quant": self.options.quant if self.hf_dir is not None else "as in file",
                "gguf_file": str(self.gguf_path),
                "gguf_source": str(self.hf_dir) if self.hf_dir is not None else "given as model",
                "gguf_built_in_load": self.gguf_built_in_load,  # conversion time is then part of load_s
                "tokenizer": "HF tokenizer of the source directory" if self.hf_dir is not None
                else "llama.cpp (GGUF vocab)",
                "model_desc": desc.value.decode(),
                "n_gpu_layers": offload,
                "extra_buffer_types": self.extra_buffers,  # AMX / repacked weights (backends/gguf/cpu_probe.py)
                "extra_buffer_types_reason": self.extra_buffers_reason,
                "gpu_offload_supported": bool(lib.llama_supports_gpu_offload()),
                "n_ctx_per_sequence": self.n_ctx,
                "n_threads_batch": lib.llama_n_threads_batch(self._ctx),
                "llama_cpp_system_info": lib.llama_print_system_info().decode().strip(),
            },
        )

    def _free_context(self) -> None:
        if getattr(self, "_batch", None) is not None:
            self._lib.llama_batch_free(self._batch)
        if getattr(self, "_ctx", None) is not None:
            self._lib.llama_free(self._ctx)
        self._ctx = self._batch = None

    @contextlib.contextmanager
    def native_profile(self, out_dir: Path) -> Iterator[dict]:
        """llama.cpp's own perf counters (llama_perf_context) over the block, in a context created with
        them on (off while measuring). llama.cpp has no per-operator timing: phases only."""
        self._free_context()
        self._perf_counters = True
        summary: dict = {"profiler": "llama.cpp perf counters (llama_perf_context)"}
        try:
            yield summary
            data = self._lib.llama_perf_context(self._ctx)
        finally:
            self._free_context()
            self._perf_counters = False
        summary["phases_ms"] = {"prompt eval": data.t_p_eval_ms, "eval": data.t_eval_ms}
        summary["counters"] = {"prompt_tokens": data.n_p_eval, "eval_tokens": data.n_eval}
        (out_dir / "llama_perf_context.json").write_text(json.dumps({**summary["phases_ms"], **summary["counters"]}))

    def close(self) -> None:
        self._free_context()
        if getattr(self, "_model", None):
            self._lib.llama_model_free(self._model)
            self._model = None
