"""`python -m tests.bench_with_stress_model ARGS`: `python -m bench ARGS` with one more built-in model, `stress-model`.

A run of a suite that names it starts with a build of a few seconds that does what a real model build does
(tests/test_kill_resume.py interrupts such runs at random moments): torch imported, a BPE tokenizer trained in
native code that does not look at signals for a second or so, a few torch training steps, files written into a
temp dir under the cache lock and renamed into place (bench/core/cache.py). It exists only in this process and
in what it forks (the run's preparation child): a worker that resolves it gets the name back unchanged, which the
known-answer backend ignores.

Prints `bench-guarded` on stderr when bench's entry point starts importing `bench.cli`: from then on Ctrl-C is
bench's to handle (before it, Python itself is still starting, and no program can keep it from printing a
traceback).
"""
from __future__ import annotations

import json
import runpy
import sys
from collections.abc import Callable
from pathlib import Path

from bench.core.cache import build_dir_atomically, cache_dir
from bench.models import BUILTIN_CONTEXT, BUILTIN_MODELS

NAME = "stress-model"
MARKER = "bench-guarded"
STEPS = 20


def _text() -> str:
    """~400 kB of the standard library's sources, in a fixed order: the tokenizer's training text."""
    root = Path(json.__file__).parent.parent
    parts: list[str] = []
    for path in sorted(root.glob("*.py")):
        parts.append(path.read_text(errors="replace"))
        if sum(map(len, parts)) > 400_000:
            break
    return "".join(parts)


def _fill(out: Path, log: Callable[[str], None]) -> None:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    log(f"building {NAME} ({STEPS} steps)")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    text = _text()
    tokenizer.train_from_iterator([text], trainers.BpeTrainer(vocab_size=1024, show_progress=False))
    ids = torch.tensor(tokenizer.encode(text).ids)
    log(f"tokenizer: {tokenizer.get_vocab_size()} tokens, {len(ids)} training tokens")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(1024, 64), torch.nn.Linear(64, 1024))
    for _ in range(STEPS):  # plain SGD: torch.optim would import torch._dynamo, seconds for nothing here
        starts = torch.randint(0, len(ids) - 65, (8,))
        window = ids[starts[:, None] + torch.arange(65)]
        loss = torch.nn.functional.cross_entropy(model(window[:, :-1]).transpose(1, 2), window[:, 1:])
        model.zero_grad()
        loss.backward()
        with torch.no_grad():
            for parameter in model.parameters():
                parameter -= 0.5 * parameter.grad
    log(f"step {STEPS}/{STEPS}  loss {loss.item():.3f}")
    tokenizer.save(str(out / "tokenizer.json"))
    torch.save(model.state_dict(), out / "model.pt")
    (out / "bench_model.json").write_text(json.dumps({"name": NAME, "steps": STEPS}))
    log(f"built {NAME}")


def build(force: bool = False, log: Callable[[str], None] = print) -> Path:
    target = cache_dir() / "models" / NAME
    return build_dir_atomically(target, lambda tmp: _fill(tmp, log), lambda p: (p / "bench_model.json").is_file(),
                                force)


def _mark(event: str, args: tuple) -> None:
    if event == "import" and args[0] == "bench.cli" and MARKER not in _marked:
        _marked.append(MARKER)
        print(MARKER, file=sys.stderr, flush=True)


_marked: list[str] = []

if __name__ == "__main__":
    BUILTIN_MODELS[NAME] = build
    BUILTIN_CONTEXT[NAME] = 1024
    sys.addaudithook(_mark)
    sys.argv[0] = "bench"
    runpy.run_module("bench", run_name="__main__", alter_sys=True)
