"""HF Llama directory -> GGUF file (f32, f16, or quantized by llama.cpp itself), cached by content hash.

`gguf_file(model_dir, quant)` returns the path of a cached GGUF file, building it on first use:
f32 and f16 are written here with the `gguf` package's writer (hyperparameters, the byte-level BPE
vocabulary with merges, token types and special ids of the HF tokenizer, and the weights with Q/K
permuted the way llama.cpp's own converter does); q8_0, q4_0 and q4_k_m are made from the f32 file
by llama.cpp's quantizer (`llama_model_quantize`). Files live in
`cache_dir()/gguf/<key>/model-<quant>.gguf`, the key hashing the source model files, the quant
type, this converter's version and the gguf / llama-cpp-python versions.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from backends.base import require
from bench.core.cache import build_dir_atomically, cache_dir, files_digest

CONVERTER_VERSION = 1  # bump when the written file changes for the same inputs
QUANTS = ("f32", "f16", "q8_0", "q4_0", "q4_k_m")
LLAMA_FTYPES = {"q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
                "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}
SOURCE_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                "generation_config.json")
EXTRA = "gguf"
WHO = "llama-cpp"


class ConversionError(ValueError):
    """The model directory cannot be converted (not a Llama, missing files, unsupported setting)."""


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
    """Hash of the source files' bytes, the quant type, this converter and the library versions."""
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
    _hparams(model_dir)  # refuse an unsupported model before taking the build lock
    name = f"model-{quant}.gguf"
    if (target / name).is_file():
        return target / name

    def fill(tmp: Path) -> None:
        log(f"converting {model_dir} to GGUF {quant} into {target}")
        if quant in ("f32", "f16"):
            write_gguf(model_dir, tmp / name, quant)
        else:
            quantize(gguf_file(model_dir, "f32", log), tmp / name, quant)
        (tmp / "source.json").write_text(json.dumps({"model_dir": str(model_dir), "quant": quant}))

    build_dir_atomically(target, fill, lambda path: (path / name).is_file())
    return target / name


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

def quantize(source: Path, out: Path, quant: str) -> None:
    """Quantize a GGUF file with llama.cpp's own quantizer (`llama_model_quantize`)."""
    import ctypes

    llama_cpp = require("llama_cpp", EXTRA, WHO)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, LLAMA_FTYPES[quant])
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), ctypes.byref(params))
    if status != 0 or not out.is_file():
        raise ConversionError(f"llama_model_quantize to {quant} failed (status {status}) for {source}; "
                              f"K-quants need tensor rows divisible by 256")
