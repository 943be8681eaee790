"""The requests of a serving case: prompts of a stated token length, or read from a JSONL file.

Prompts are cut from the evaluation text (bench/measure/evaltext.py) at seeded random places: a
window of the stated number of token ids of the model's own tokenizer, decoded to text (servers take
text). Decoding and re-encoding can merge tokens across the cut, so a window whose text re-encodes to
another length is moved a little; the length recorded for each request is always the count of the
text actually sent. Lengths are fixed or drawn per request (uniform, or normal clipped to [min, max]).
A JSONL file gives `{"prompt": text}` per line (optional "output_tokens"), used in turn.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.core.deps import require
from bench.records.schema import LengthDistribution, ServingRequest

SHIFTS = 16  # window positions tried before settling for the closest length


@dataclass(frozen=True)
class Prompt:
    text: str
    input_tokens: int
    output_tokens: int


class Tokenizer:
    """The model's tokenizer (its tokenizer.json through `tokenizers`): counts what is sent and received."""

    def __init__(self, model_dir: str) -> None:
        tokenizers = require("tokenizers", "serving", "serving")
        path = Path(model_dir) / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: the serving task counts tokens with the model's tokenizer.json")
        self._tok = tokenizers.Tokenizer.from_file(str(path))

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids)

    def count(self, text: str) -> int:
        return len(self.encode(text))


def lengths(spec: int | LengthDistribution, n: int, rng: np.random.Generator) -> list[int]:
    """n prompt lengths: the fixed one, or draws from the distribution (rounded, clipped to [min, max])."""
    if isinstance(spec, int):
        return [spec] * n
    if spec.distribution == "uniform":
        return [int(x) for x in rng.integers(spec.min, spec.max + 1, n)]
    mean = spec.mean if spec.mean is not None else (spec.min + spec.max) / 2
    std = spec.std if spec.std is not None else max((spec.max - spec.min) / 6, 1e-9)
    return [int(x) for x in np.clip(np.rint(rng.normal(mean, std, n)), spec.min, spec.max)]


def _cut(ids: list[int], length: int, start: int, tokenizer: Tokenizer) -> tuple[str, int]:
    """Text of a window of `length` ids at about `start`, re-encoding to `length` tokens where one is found."""
    best: tuple[str, int] | None = None
    span = len(ids) - length
    for shift in range(SHIFTS):
        at = (start + shift) % (span + 1)
        text = tokenizer.decode(ids[at: at + length])
        count = tokenizer.count(text)
        if count == length:
            return text, count
        if best is None or abs(count - length) < abs(best[1] - length):
            best = (text, count)
    assert best is not None
    return best


def from_text(ids: list[int], request: ServingRequest, n: int, seed: int, tokenizer: Tokenizer) -> list[Prompt]:
    rng = np.random.default_rng(seed)
    wanted = lengths(request.input_tokens, n, rng)
    if max(wanted) >= len(ids):
        raise ValueError(f"the evaluation text has {len(ids)} tokens, too few for prompts of {max(wanted)}")
    prompts = []
    for length in wanted:
        text, count = _cut(ids, length, int(rng.integers(0, len(ids) - length + 1)), tokenizer)
        prompts.append(Prompt(text, count, request.output_tokens))
    return prompts


PROMPTS_FILE_MAX_BYTES = 64 << 20  # far more prompts than a level sends; /dev/zero or a huge file fails at once
OUTPUT_TOKENS_MAX = 1 << 20  # the suite's bound on a token count (bench/suite/schema.py AXIS_BOUNDS)


def read_prompts_file(path: str) -> list[dict]:
    """The rows of a prompts file, checked: a regular UTF-8 file of at most PROMPTS_FILE_MAX_BYTES, each non-blank
    line a JSON object with a non-empty string `prompt` and an optional integer `output_tokens` (>= 1). A ValueError
    names the file (and line) and what is wrong; `validate` reports it at the suite's line."""
    file = Path(path).expanduser()
    if not file.is_file():  # also refuses devices and FIFOs (/dev/zero would be read until memory runs out)
        what = "no such file" if not file.exists() else "not a regular file"
        raise ValueError(f"{path}: {what} (relative paths are relative to where you run bench)")
    with open(file, "rb") as f:
        data = f.read(PROMPTS_FILE_MAX_BYTES + 1)
    if len(data) > PROMPTS_FILE_MAX_BYTES:
        raise ValueError(f"{path}: larger than {PROMPTS_FILE_MAX_BYTES >> 20} MiB: not a prompts file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            row = None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"]:
            raise ValueError(f"{path}:{number}: each line must be a JSON object with a non-empty string 'prompt'")
        tokens = row.get("output_tokens")
        if tokens is not None and (type(tokens) is not int or not 1 <= tokens <= OUTPUT_TOKENS_MAX):
            raise ValueError(f"{path}:{number}: output_tokens must be an integer from 1 to {OUTPUT_TOKENS_MAX}")
        rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no prompts")
    return rows


def from_file(path: str, request: ServingRequest, n: int, tokenizer: Tokenizer) -> list[Prompt]:
    rows = read_prompts_file(path)
    return [Prompt(r["prompt"], tokenizer.count(r["prompt"]), int(r.get("output_tokens") or request.output_tokens))
            for r in (rows[i % len(rows)] for i in range(n))]


def make_prompts(request: ServingRequest, n: int, seed: int, tokenizer: Tokenizer) -> list[Prompt]:
    """`n` prompts for one level (seeded: the same every run)."""
    if request.prompts_file:
        return from_file(request.prompts_file, request, n, tokenizer)
    from bench.measure.evaltext import eval_text

    return from_text(tokenizer.encode(eval_text(request.text)), request, n, seed, tokenizer)
