"""Evaluation texts for perplexity, by name: built in (offline) or fetched by a library (online).

- "stdlib-heldout": the held-out split of the built-in corpus (Python stdlib docstrings), offline.
- "wikitext-2" / "wikitext-103": the raw test split through `datasets` (needs the network and
  `pip install 'bench[datasets]'`), joined with blank lines as in the usual HF perplexity recipe.
- anything else: a path to a UTF-8 text file.
"""
from __future__ import annotations

from pathlib import Path

WIKITEXT = {"wikitext-2": "wikitext-2-raw-v1", "wikitext-103": "wikitext-103-raw-v1"}
NAMES = ["stdlib-heldout", *WIKITEXT]


def eval_text(spec: str) -> str:
    if spec == "stdlib-heldout":
        from bench.models.corpus import heldout_text

        return heldout_text()
    if spec in WIKITEXT:
        from bench.core.deps import require

        datasets = require("datasets", "datasets", "perplexity text")
        rows = datasets.load_dataset("Salesforce/wikitext", WIKITEXT[spec], split="test")["text"]
        return "\n\n".join(rows)
    return Path(spec).read_text(encoding="utf-8")
