"""Calibration sets for quantizers that learn from data (GPTQ, AWQ): token ids from the corpus's train split.

`samples` pieces of `tokens` tokens each, cut at evenly spaced character offsets of the built-in
corpus's train split (never the held-out split that perplexity is measured on) and tokenized with
the model directory's own tokenizer. Deterministic: the same corpus, tokenizer and sizes give the
same ids. Backends cannot import bench (tests/test_architecture.py), so they get a set through this
module's command line, like any other tool:

    python -m bench.models.calibration MODEL_DIR --samples 64 --tokens 256 --out ids.json
"""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

from bench.core.cache import write_json_atomic
from bench.models.corpus import load_corpus

SOURCE = "stdlib-train"


def calibration_set(model_dir: str | Path, samples: int, tokens: int) -> dict:
    """{"source", "corpus_sha256", "samples", "tokens", "ids": [[int] * tokens] * samples, "sha256"}."""
    from tokenizers import Tokenizer

    corpus = load_corpus()
    tokenizer = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    text = corpus.train
    piece = len(text) // samples
    ids = []
    for i in range(samples):
        chunk = text[i * piece: (i + 1) * piece]
        encoded = tokenizer.encode(chunk, add_special_tokens=False).ids
        if len(encoded) < tokens:
            raise ValueError(f"calibration piece {i} has {len(encoded)} tokens, fewer than {tokens}: use fewer samples")
        ids.append(encoded[:tokens])
    digest = hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:16]
    return {"source": SOURCE, "corpus_sha256": corpus.sha256, "samples": samples, "tokens": tokens, "ids": ids,
            "sha256": digest}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.models.calibration", description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    write_json_atomic(Path(args.out), calibration_set(args.model_dir, args.samples, args.tokens))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
