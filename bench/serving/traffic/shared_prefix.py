"""Shared-prefix prompts: N requests that begin with the same long prefix (a system prompt), then differ.

What a prefix cache (vLLM's automatic prefix caching, llama.cpp reusing the KV cells of a common prefix)
can reuse across requests. The prefix is a window of `shared_prefix_tokens` token ids cut from the
evaluation text at a seeded place, ending in a newline; each request's suffix is another window, cut
at its own seeded place, with its leading whitespace removed, so the byte-level BPE pre-tokenizer
splits at the newline and the prefix's tokens are exactly the first tokens of every prompt (checked:
`shared_tokens` of every prompt is recorded, and a prompt that does not share the whole prefix at the
token level is an error, never silently another workload). Input lengths are counts of the text sent.
"""
from __future__ import annotations

import numpy as np

from bench.records.schema import ServingRequest
from bench.serving.traffic.prompts import Prompt, Tokenizer, from_text, lengths


def common_prefix(a: list[int], b: list[int]) -> int:
    """Number of leading token ids `a` and `b` share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def prefix_text(ids: list[int], tokens: int, seed: int, tokenizer: Tokenizer) -> str:
    """A window of about `tokens` ids of `ids` (seeded place), as text ending in one newline."""
    if tokens >= len(ids):
        raise ValueError(f"the evaluation text has {len(ids)} tokens, too few for a shared prefix of {tokens}")
    start = int(np.random.default_rng([seed, 1]).integers(0, len(ids) - tokens + 1))
    text = tokenizer.decode(ids[start: start + tokens]).rstrip() + "\n"
    for extra in range(1, 16):  # rstrip may have removed tokens: extend until the count is reached
        if tokenizer.count(text) >= tokens:
            break
        text = tokenizer.decode(ids[start: start + tokens + extra]).rstrip() + "\n"
    return text


def make_prompts(request: ServingRequest, n: int, seed: int, tokenizer: Tokenizer) -> list[Prompt]:
    """`n` prompts sharing one prefix of `request.shared_prefix_tokens` tokens (seeded: the same every run)."""
    from bench.measure.evaltext import eval_text

    assert request.shared_prefix_tokens is not None
    ids = tokenizer.encode(eval_text(request.text))
    prefix = prefix_text(ids, request.shared_prefix_tokens, seed, tokenizer)
    prefix_ids = tokenizer.encode(prefix)
    wanted = lengths(request.input_tokens, n, np.random.default_rng(seed))
    if min(wanted) <= len(prefix_ids):
        raise ValueError(f"input_tokens ({min(wanted)}) must exceed shared_prefix_tokens ({len(prefix_ids)} tokens "
                         f"as cut) to leave each request a suffix of its own")
    suffix_request = request.model_copy(update={"input_tokens": 1, "shared_prefix_tokens": None})
    prompts = []
    for i, length in enumerate(wanted):
        cut = from_text(ids, suffix_request.model_copy(update={"input_tokens": length - len(prefix_ids)}), 1,
                        seed + 1 + i, tokenizer)[0]
        text = prefix + cut.text.lstrip()
        shared = common_prefix(prefix_ids, tokenizer.encode(text))
        if shared != len(prefix_ids):
            raise ValueError(f"prompt {i} shares {shared} of the prefix's {len(prefix_ids)} tokens")
        prompts.append(Prompt(text, tokenizer.count(text), request.output_tokens))
    return prompts
