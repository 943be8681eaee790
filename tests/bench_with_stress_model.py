"""`python -m tests.bench_with_stress_model ARGS`: `python -m bench ARGS` with one more built-in model, `stress-model`.

A run of a suite that names it starts with a build of a few seconds that does what a real model build does
(tests/test_kill_resume.py interrupts such runs at random moments): a BPE tokenizer trained and applied in native
code that looks at no signal for a few tenths of a second (longer than the runner gives its preparation child to
stop, 0.3 s), a few training steps in numpy, files written into a temp dir under the cache lock and renamed into
place (bench/core/cache.py). No torch: its import alone would double the cost of the test's fifty runs, and what
the runner does on Ctrl-C does not depend on what its preparation child runs.

The model exists only in this process and in what it forks (the run's preparation child): a worker that resolves
it gets the name back unchanged, which the known-answer backend ignores.

Prints `bench-guarded` on stderr when bench's entry point starts importing `bench.cli`: from then on Ctrl-C is
bench's to handle (before it, Python itself is still starting, and no program can keep it from printing a
traceback).
"""
from __future__ import annotations

import dataclasses
import json
import runpy
import sys
from collections.abc import Callable
from pathlib import Path

from bench.models.recipe import MARKER as BUILT
from bench.models.recipe import ModelRecipe, register

NAME = "stress-model"
MARKER = "bench-guarded"
STEPS = 20


def _text() -> str:
    """~200 kB of the standard library's sources, in a fixed order: the tokenizer's training text."""
    root = Path(json.__file__).parent.parent
    parts: list[str] = []
    for path in sorted(root.glob("*.py")):
        parts.append(path.read_text(errors="replace"))
        if sum(map(len, parts)) > 200_000:
            break
    return "".join(parts)


def _fill(out: Path, log: Callable[[str], None]) -> None:
    import numpy as np
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    log(f"building {NAME} ({STEPS} steps)")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    text = _text()
    tokenizer.train_from_iterator([text], trainers.BpeTrainer(vocab_size=1024, show_progress=False))
    ids = np.array(tokenizer.encode(text).ids)
    log(f"tokenizer: {tokenizer.get_vocab_size()} tokens, {len(ids)} training tokens")
    rng = np.random.default_rng(0)
    embed, out_proj = rng.normal(0, 0.02, (1024, 64)), rng.normal(0, 0.02, (64, 1024))
    for _ in range(STEPS):  # a bigram model, softmax cross-entropy, plain SGD: native numpy work between bytecodes
        rows = rng.integers(0, len(ids) - 1, 512)
        hidden = embed[ids[rows]]
        logits = hidden @ out_proj
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        loss = -np.log(probs[np.arange(len(rows)), ids[rows + 1]]).mean()
        probs[np.arange(len(rows)), ids[rows + 1]] -= 1
        grad_out, grad_hidden = hidden.T @ probs / len(rows), probs @ out_proj.T / len(rows)
        out_proj -= 0.5 * grad_out
        np.add.at(embed, ids[rows], -0.5 * grad_hidden)
    log(f"step {STEPS}/{STEPS}  loss {loss:.3f}")
    tokenizer.save(str(out / "tokenizer.json"))
    np.savez(out / "model.npz", embed=embed, out_proj=out_proj)
    (out / BUILT).write_text(json.dumps({"name": NAME, "steps": STEPS}))  # no torch: not recipe.write_record
    log(f"built {NAME}")


@dataclasses.dataclass(frozen=True)
class StressRecipe(ModelRecipe):
    """The test-only built-in, declared as every built-in is (bench/models/recipe.py): hash, directory, build."""

    steps: int = STEPS
    prefix: str = NAME
    context: int = 1024

    def build_into(self, out: Path, log: Callable[[str], None]) -> None:
        _fill(out, log)


def _mark(event: str, args: tuple) -> None:
    if event == "import" and args[0] == "bench.cli" and MARKER not in _marked:
        _marked.append(MARKER)
        print(MARKER, file=sys.stderr, flush=True)


_marked: list[str] = []

if __name__ == "__main__":
    register(NAME, StressRecipe.context, StressRecipe)
    sys.addaudithook(_mark)
    sys.argv[0] = "bench"
    runpy.run_module("bench", run_name="__main__", alter_sys=True)
