"""HF model directory -> GGUF file (f32, f16, or quantized by llama.cpp itself), cached by content hash.

`gguf_file(model_dir, quant)` returns the path of a cached GGUF file, building it on first use. f32 and
f16 are written by llama.cpp's own converter (`convert_hf_to_gguf.py` at the installed
llama-cpp-python's exact revision, run as a child process: see `llamacpp_source.py`), so every
architecture llama.cpp supports converts. q8_0, q4_0 and q4_k_m are made from the f32 file by
llama.cpp's quantizer (`llama_model_quantize`), also in a child process. Each build's wall time and
the peak RSS of the process that did it are kept next to the file; `conversion_info(path)` reads them.

llama.cpp's converter identifies BPE tokenizers by hashing their output and refuses one it does not
know ("BPE pre-tokenizer was not recognized"), which is what a home-trained tokenizer is (tiny-llama's).
For that case only, and only for the Llama architecture, `write_gguf` below, a hand-written writer
(byte-level BPE vocabulary with merges and pre-tokenizer `gpt-2`, Q/K permuted as llama.cpp's converter
does), writes the file instead; `conversion_info` names which converter made each file. Files live in
`cache_dir()/gguf/<key>/model-<quant>.gguf`, the key hashing the source model files, the quant type,
this module's version and the gguf / llama-cpp-python versions (the latter fixes the converter's).
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from backends.base import require
from backends.cached_build import run_python
from bench.core.cache import build_dir_atomically, cache_dir, files_digest
from bench.core.timing import Clock

CONVERTER_VERSION = 2  # bump when the written file changes for the same inputs
QUANTS = ("f32", "f16", "q8_0", "q4_0", "q4_k_m")
LLAMA_FTYPES = {"q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
                "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}
SOURCE_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                "generation_config.json", "tokenizer.model")
EXTRA = "gguf"
WHO = "llama-cpp"
INFO = "conversion.json"
LLAMACPP_CONVERTER = "llama.cpp convert_hf_to_gguf.py"
BENCH_WRITER = "bench's Llama GGUF writer (backends/gguf/convert.py write_gguf)"
QUANTIZER = "llama.cpp llama_model_quantize"
UNRECOGNISED_TOKENIZER = "pre-tokenizer was not recognized"

class ConversionError(ValueError):
    """The model directory cannot be converted (missing files, unsupported architecture or setting)."""


def permute(weights, n_head: int, n_head_kv: int | None = None):
    """Reorder Q/K rows from HF's rotate-half RoPE layout to llama.cpp's interleaved-pair layout."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _source_files(model_dir: Path) -> list[Path]:
    weights = sorted(model_dir.glob("*.safetensors"))
    if not (model_dir / "config.json").is_file() or not weights:
        raise ConversionError(f"{model_dir}: not a Hugging Face model directory with config.json and "
                              f"*.safetensors weights; cannot convert to GGUF")
    return [model_dir / name for name in SOURCE_FILES if (model_dir / name).is_file()] + weights


def cache_key(model_dir: Path, quant: str) -> str:
    """Hash of the source files' bytes, the quant type, this module and the library versions."""
    gguf, llama_cpp = require("gguf", EXTRA, WHO), require("llama_cpp", EXTRA, WHO)
    return files_digest(_source_files(model_dir), quant, f"converter {CONVERTER_VERSION}",
                        f"gguf {_version('gguf', gguf)}", f"llama-cpp-python {llama_cpp.__version__}")


def _version(dist: str, module) -> str:
    from importlib.metadata import version

    return getattr(module, "__version__", None) or version(dist)


def gguf_file(model_dir: str | Path, quant: str = "f16", log: Callable[[str], None] = print) -> Path:
    """Path of the cached GGUF of `model_dir` at `quant`, built (atomically, under a lock) if missing.

    `log` is called once, before building, only when the file is not cached yet.
    """
    if quant not in QUANTS:
        raise ConversionError(f"unknown GGUF quant type {quant!r}; valid values: {', '.join(QUANTS)}")
    model_dir = Path(model_dir)
    target = cache_dir() / "gguf" / cache_key(model_dir, quant)
    name = f"model-{quant}.gguf"
    if (target / name).is_file():
        return target / name

    def fill(tmp: Path) -> None:
        log(f"converting {model_dir} to GGUF {quant} into {target}")
        if quant in ("f32", "f16"):
            info = _convert(model_dir, tmp / name, quant, log)
        else:
            source = gguf_file(model_dir, "f32", log)
            info = {**quantize(source, tmp / name, quant), "input": str(source),
                    "input_conversion": conversion_info(source)}
        info = {"model_dir": str(model_dir), "quant": quant, **info}
        (tmp / INFO).write_text(json.dumps(info, indent=1))

    build_dir_atomically(target, fill, lambda path: (path / name).is_file())
    return target / name


def conversion_info(path: str | Path) -> dict:
    """How the cached GGUF `path` was made: converter, seconds (wall), peak_rss_bytes of the process
    that made it (None where unknown), and for a quantized file the f32 conversion it started from
    (`input_conversion`). Empty for a GGUF file bench did not make."""
    info_path = Path(path).parent / INFO
    return json.loads(info_path.read_text()) if info_path.is_file() else {}


def conversion_cost(path: str | Path) -> dict:
    """What making the cached GGUF `path` from its model directory cost, as BackendDescription fields: for a
    quantized file the f32 conversion it started from plus the quantization (seconds summed, the larger peak
    RSS); None where a step's figure is unknown or bench did not make the file."""
    steps, info = [], conversion_info(path)
    while info:
        steps.append(info)
        info = info.get("input_conversion") or {}
    seconds = [s["seconds"] for s in steps if s.get("seconds") is not None]
    peaks = [s["peak_rss_bytes"] for s in steps if s.get("peak_rss_bytes") is not None]
    return {"conversion_seconds": sum(seconds) if steps and len(seconds) == len(steps) else None,
            "conversion_peak_rss_bytes": max(peaks) if steps and len(peaks) == len(steps) else None}


def _convert(model_dir: Path, out: Path, quant: str, log: Callable[[str], None]) -> dict:
    """f32/f16 with llama.cpp's converter; bench's writer where llama.cpp refuses the tokenizer of a Llama."""
    from backends.gguf import llamacpp_source

    try:
        done = llamacpp_source.convert(model_dir, out, quant, log)
        return {"converter": f"{LLAMACPP_CONVERTER} (llama-cpp-python {llamacpp_source.runtime_version()})",
                "seconds": done.seconds, "peak_rss_bytes": done.peak_rss_bytes}
    except llamacpp_source.ConverterFailed as exc:
        if UNRECOGNISED_TOKENIZER not in str(exc):
            raise ConversionError(str(exc)) from None
        try:
            _hparams(model_dir)  # bench's writer takes plain Llamas only
        except ConversionError as refused:
            raise ConversionError(f"{exc}\n(bench's own writer cannot stand in: {refused})") from None
        reason = f"llama.cpp's converter does not recognise this tokenizer ({UNRECOGNISED_TOKENIZER})"
        log(f"{reason}: writing the GGUF with bench's Llama writer")
        clock = Clock()
        clock.start()
        write_gguf(model_dir, out, quant)
        clock.mark()
        return {"converter": BENCH_WRITER, "why_not_llama_cpp": reason,
                "seconds": clock.stamps_ns()[-1] / 1e9, "peak_rss_bytes": None,
                "peak_rss_note": "written in the calling process: no separate peak"}


# ---------------------------------------------------------------- writing f32 / f16

def _hparams(model_dir: Path) -> dict:
    config = json.loads((model_dir / "config.json").read_text())
    if config.get("model_type") != "llama":
        raise ConversionError(f"{model_dir}: model_type {config.get('model_type')!r} is not supported; "
                              f"this converter writes Llama-architecture models only")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise ConversionError(f"{model_dir}: rope type {rope.get('rope_type')!r} is not supported "
                              f"(only default RoPE)")
    if config.get("hidden_act", "silu") != "silu" or config.get("attention_bias") or config.get("mlp_bias"):
        raise ConversionError(f"{model_dir}: only Llama with SiLU MLP and no biases is supported")
    return config


def _tokenizer_vocab(model_dir: Path, n_vocab: int):
    """(tokens, token types, add_bos) of the HF tokenizer, padded to the model's vocab size."""
    gguf = require("gguf", EXTRA, WHO)
    transformers = require("transformers", "hf", WHO)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    by_id = {i: tok for tok, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder  # id -> AddedToken
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(added[i].content)
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    add_bos = tokenizer.bos_token_id is not None and with_special[:1] == [tokenizer.bos_token_id]
    return tokens, types, add_bos


def _weights(model_dir: Path):
    """(HF name, float32 numpy array) of every tensor in the directory's safetensors files."""
    safetensors = require("safetensors", "hf", WHO)
    require("torch", "hf", WHO)
    for path in sorted(model_dir.glob("*.safetensors")):
        with safetensors.safe_open(path, framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                yield name, f.get_tensor(name).float().numpy()


def write_gguf(model_dir: Path, out: Path, quant: str) -> None:
    """Write `model_dir` as a GGUF file: 2-D weights in `quant` (f32 or f16), norms in f32."""
    gguf = require("gguf", EXTRA, WHO)
    import numpy as np

    config = _hparams(model_dir)
    n_head = config["num_attention_heads"]
    n_head_kv = config.get("num_key_value_heads") or n_head
    n_layers, n_embd = config["num_hidden_layers"], config["hidden_size"]
    head_dim = config.get("head_dim") or n_embd // n_head
    rope_theta = (config.get("rope_parameters") or {}).get("rope_theta", config.get("rope_theta", 10000.0))
    tokens, types, add_bos = _tokenizer_vocab(model_dir, config["vocab_size"])
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=config["vocab_size"])
    if not special.merges:
        raise ConversionError(f"{model_dir}: tokenizer has no BPE merges; only byte-level BPE tokenizers are supported")

    writer = gguf.GGUFWriter(str(out), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    writer.add_name(model_dir.name)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32 if quant == "f32" else gguf.LlamaFileType.MOSTLY_F16)
    writer.add_vocab_size(config["vocab_size"])
    writer.add_context_length(config.get("max_position_embeddings", 2048))
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(rope_theta))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special.add_to_gguf(writer, quiet=True)
    writer.add_add_bos_token(add_bos)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)
    for hf_name, data in _weights(model_dir):
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ConversionError(f"{model_dir}: tensor {hf_name!r} has no GGUF name for the llama architecture")
        if hf_name.endswith("q_proj.weight"):
            data = permute(data, n_head, n_head)
        elif hf_name.endswith("k_proj.weight"):
            data = permute(data, n_head, n_head_kv)
        dtype = np.float16 if quant == "f16" and data.ndim > 1 else np.float32
        writer.add_tensor(name, np.ascontiguousarray(data.astype(dtype)))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# ---------------------------------------------------------------- llama.cpp quantization

def quantize(source: Path, out: Path, quant: str) -> dict:
    """Quantize a GGUF file with llama.cpp's own quantizer in a child process; its seconds and peak RSS."""
    require("llama_cpp", EXTRA, WHO)
    child = run_python(["-m", "backends.gguf.quantize_child", str(source), str(out), LLAMA_FTYPES[quant]],
                       env=dict(os.environ))
    lines = child.output.strip().splitlines()
    if child.returncode != 0 or not out.is_file():
        tail = "\n".join(lines)[-800:]
        raise ConversionError(f"llama_model_quantize to {quant} failed (exit {child.returncode}) for {source}; "
                              f"K-quants need tensor rows divisible by 256:\n{tail}")
    fallbacks = [line.strip() for line in lines if "fallback" in line.lower()]
    return {"converter": QUANTIZER, "seconds": child.seconds, "peak_rss_bytes": child.peak_rss_bytes,
            "fallbacks": fallbacks}
