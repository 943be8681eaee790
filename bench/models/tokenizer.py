"""Tokenizers of the built-in models: llama.cpp's vocabularies read once into the cache, and saving one loadably.

llama.cpp ships real tokenizers as vocabulary-only GGUF files (`ggml-vocab-<name>.gguf` in
llama-cpp-python's sdist, see backends/gguf/llamacpp_source.py); transformers' GGUF reader turns one into
a fast tokenizer (`read_vocab`) in ~40 s for a 150k vocabulary, so `load_vocab` caches its result (as
tokenizer.json) per vocabulary, llama-cpp-python version and transformers version. `save_tokenizer` writes a tokenizer
into a model directory with the class it declares set (transformers 5 writes "TokenizersBackend", which
transformers 4.x, e.g. vLLM's, cannot load).
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from bench.core.cache import build_dir_atomically, cache_dir


def read_vocab(vocab: str, log: Callable[[str], None] = print):
    """llama.cpp's vocabulary `ggml-vocab-<vocab>.gguf` read by transformers' GGUF reader, as it reads it."""
    from transformers import AutoTokenizer

    from backends.gguf.llamacpp_source import vocab_file

    path = vocab_file(vocab, log)
    log(f"reading llama.cpp's {path.name} into a transformers tokenizer")
    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def load_vocab(vocab: str, log: Callable[[str], None] = print):
    """`read_vocab` once, saved in the cache and loaded back from there. Loading it back is not a no-op: the
    tokenizer class the saved files declare may set more (Qwen2's adds an NFC normalizer, as Qwen2.5's own
    tokenizer.json has), so a recipe reads its vocabulary one way or the other, for good (its built bytes)."""
    import transformers
    from transformers import AutoTokenizer

    from backends.gguf.llamacpp_source import runtime_version

    target = cache_dir() / "tokenizers" / f"{vocab}-llama-cpp-{runtime_version()}-tf-{transformers.__version__}"
    build_dir_atomically(target, lambda tmp: read_vocab(vocab, log).save_pretrained(tmp),
                         lambda path: (path / "tokenizer.json").is_file())
    return AutoTokenizer.from_pretrained(target)


def save_tokenizer(tokenizer, path: Path, tokenizer_class: str = "PreTrainedTokenizerFast") -> None:
    """save_pretrained, then declare `tokenizer_class` in tokenizer_config.json."""
    tokenizer.save_pretrained(path)
    config_path = path / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = tokenizer_class
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
