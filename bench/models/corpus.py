"""Offline text corpus: docstrings of the Python standard library, read with `ast`.

Files are visited in sorted order; the docstrings of every 10th file (index % 10 == 0)
form the held-out split, the rest is the train split. Nothing is imported or downloaded.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import os
import sys
import sysconfig
from pathlib import Path

from bench.core.cache import cache_dir, write_atomic

SEPARATOR = "\n\n"
HELDOUT_EVERY = 10
EXCLUDED_DIRS = {"site-packages", "test", "tests", "idle_test"}  # covers idlelib/idle_test, lib2to3/tests


@dataclasses.dataclass(frozen=True)
class Corpus:
    train: str
    heldout: str
    n_files: int
    n_docstrings: int
    sha256: str  # of train + heldout

    def summary(self) -> dict[str, object]:
        """What a model built on it records of it."""
        return {"sha256": self.sha256, "n_files": self.n_files, "n_docstrings": self.n_docstrings}


def stdlib_files(root: Path) -> list[Path]:
    """Relative paths of the stdlib's .py files, sorted, without tests and site-packages."""
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in EXCLUDED_DIRS]
        files += [Path(dirpath, f).relative_to(root) for f in filenames if f.endswith(".py")]
    return sorted(files)


def docstrings(source: bytes) -> list[str]:
    """Module, class and function docstrings of one source file (ast.walk order)."""
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    nodes = [n for n in ast.walk(ast.parse(source)) if isinstance(n, kinds)]
    return [d for n in nodes if (d := ast.get_docstring(n, clean=True))]


def build_corpus() -> Corpus:
    """Scan the stdlib (~5 s). Files that fail to decode or parse are skipped."""
    root = Path(sysconfig.get_paths()["stdlib"])
    train: list[str] = []
    heldout: list[str] = []
    n_files = 0
    for i, rel in enumerate(stdlib_files(root)):
        try:
            docs = docstrings((root / rel).read_bytes())
        except (SyntaxError, ValueError, UnicodeDecodeError):
            continue
        n_files += 1
        (heldout if i % HELDOUT_EVERY == 0 else train).extend(docs)
    train_text, heldout_text = SEPARATOR.join(train), SEPARATOR.join(heldout)
    sha = hashlib.sha256((train_text + heldout_text).encode()).hexdigest()
    return Corpus(train_text, heldout_text, n_files, len(train) + len(heldout), sha)


_loaded: dict[str, Corpus] = {}


def load_corpus() -> Corpus:
    """The corpus, cached on disk (and in memory) per Python version and stdlib path."""
    stdlib = sysconfig.get_paths()["stdlib"]
    key = hashlib.sha256(f"{sys.version}\0{stdlib}".encode()).hexdigest()[:12]
    if key in _loaded:
        return _loaded[key]
    path = cache_dir() / "corpus" / f"corpus-{key}.json"
    corpus = None
    if path.exists():
        corpus = Corpus(**json.loads(path.read_text(encoding="utf-8")))
        if hashlib.sha256((corpus.train + corpus.heldout).encode()).hexdigest() != corpus.sha256:
            corpus = None  # corrupted: rebuild
    if corpus is None:
        corpus = build_corpus()
        write_atomic(path, lambda tmp: tmp.write_text(json.dumps(dataclasses.asdict(corpus)), encoding="utf-8"))
    _loaded[key] = corpus
    return corpus


def heldout_path() -> Path:
    """Path of the held-out text, `cache_dir()/corpus/heldout-<sha12>.txt` (written if missing)."""
    corpus = load_corpus()
    path = cache_dir() / "corpus" / f"heldout-{corpus.sha256[:12]}.txt"
    if not path.exists():
        write_atomic(path, lambda tmp: tmp.write_text(corpus.heldout, encoding="utf-8"))
    return path


def heldout_text() -> str:
    return heldout_path().read_text(encoding="utf-8")
