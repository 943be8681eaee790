"""Attention-shape ablations of the built-in tiny-llama: its recipe with one thing changed, trained the same way.

- `tiny-llama-kv1`: 1 KV head for the 4 query heads (multi-query attention);
- `tiny-llama-kv2`: 2 KV heads, groups of 2 (grouped-query attention): tiny-llama itself, the same recipe and
  the same cached build;
- `tiny-llama-mha`: 4 KV heads, one per query head (multi-head attention);
- `tiny-llama-swa`: tiny-llama (2 KV heads) attending to the last `SWA_WINDOW` tokens only (sliding-window
  attention: Mistral's architecture, which is Llama's plus the window; transformers' cache then keeps the
  window only).

Corpus, tokenizer, seed, steps, schedule and threads are the recipe's (bench/models/tiny_llama.py), so a
difference in quality is the shape's. Each builds once (~60 s of one core) into the shared cache.
"""
from __future__ import annotations

import dataclasses
import functools

from bench.models import tiny_llama
from bench.models.recipe import register

SWA_WINDOW = 64  # tokens; a quarter of the training sequence length (256), so the window binds in training
VARIANTS: dict[str, dict] = {
    "tiny-llama-kv1": {"num_kv_heads": 1},
    "tiny-llama-kv2": {},
    "tiny-llama-mha": {"num_kv_heads": tiny_llama.Recipe.num_heads},
    "tiny-llama-swa": {"sliding_window": SWA_WINDOW},
}


def recipe(name: str, **overrides) -> tiny_llama.Recipe:
    """The recipe of variant `name` (overrides: e.g. fewer steps, for a test)."""
    return dataclasses.replace(tiny_llama.default_recipe(), **VARIANTS[name], **overrides)


for _name in VARIANTS:
    register(_name, tiny_llama.CONTEXT, functools.partial(recipe, _name))
