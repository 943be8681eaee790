"""ARCHITECTURE.md names every module, and the files and modules the docs and the source name exist.

- The folder table (ARCHITECTURE.md "## Folders"): one row per folder of bench/, backends/ and benchmarks/ that
  holds modules, whose second cell names each of its modules as `name.py` (or `folder/name.py` from the root).
  A package's `__init__.py` is named where it holds code; one that is only a docstring (and re-exports) is the
  row's folder itself. A module of no row, a row naming a file that is not there, and a folder row of no folder
  all fail, each by name.
- Paths (`bench/…py`, `backends/…py`, `benchmarks/…py`, `docs/…md`) named anywhere in the source, the tests or
  the docs, and modules named by dotted name (`bench.measure.profiling`) in the comments and strings of bench/,
  backends/ and benchmarks/ or in the docs, exist: a file that moved leaves no text behind naming it.

Pure and fast: every file is read as text (ast, tokenize, regular expressions), nothing is imported.
"""
from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

from tests.conftest import ROOT

PACKAGES = ("bench", "backends", "benchmarks")
PAGES = ("README.md", "ARCHITECTURE.md", "docs")


def _holds_code(init: Path) -> bool:
    """Whether a package's `__init__.py` holds more than its docstring, imports and dunder names (`__all__`)."""
    for node in ast.parse(init.read_text()).body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # the docstring
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, ast.Assign) and all(getattr(t, "id", "").startswith("__") for t in node.targets):
            continue
        return True
    return False


def modules_to_name(root: Path, packages: tuple[str, ...] = PACKAGES) -> set[str]:
    """Every module the folder table must name, as a path from `root` (pycache and templates hold none)."""
    found = set()
    for package in packages:
        for path in (root / package).rglob("*.py"):
            if path.name != "__init__.py" or _holds_code(path):
                found.add(path.relative_to(root).as_posix())
    return found


def folder_table(text: str) -> dict[str, str]:
    """ARCHITECTURE.md's folder table: folder ("bench/run/") -> the text of its row's description cell."""
    section = ("\n" + text).split("\n## Folders", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        match = re.fullmatch(r"\| `([\w/]+/)` \| (.*) \|", line.strip())
        if match:
            assert match.group(1) not in rows, f"two rows for {match.group(1)} in ARCHITECTURE.md's folder table"
            rows[match.group(1)] = match.group(2)
    return rows


def check_table(text: str, root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, list[str]]:
    """What the folder table gets wrong against the tree under `root`: modules it does not name in their folder's
    row, files it names that are not there, rows of folders that hold no module."""
    rows = folder_table(text)
    named: set[str] = set()
    absent: list[str] = []
    for folder, cell in rows.items():
        for token in re.findall(r"`([\w/.]+\.py)`", cell):
            path = token if token.startswith(tuple(p + "/" for p in packages)) else folder + token
            if not (root / path).is_file():
                absent.append(f"{path} (row {folder})")
            elif path.rpartition("/")[0] + "/" == folder:
                named.add(path)
    expected = modules_to_name(root, packages)
    folders = {path.rpartition("/")[0] + "/" for path in (root / p for p in packages) for path in
               (q.relative_to(root).as_posix() for q in path.rglob("*.py"))}
    return {"not named": sorted(expected - named), "named but absent": sorted(absent),
            "rows of no folder of modules": sorted(set(rows) - folders)}


def test_the_folder_table_names_every_module_and_only_modules_that_exist():
    wrong = check_table((ROOT / "ARCHITECTURE.md").read_text(), ROOT)
    assert not any(wrong.values()), "ARCHITECTURE.md's folder table against the tree:\n" + "\n".join(
        f"{what}: {', '.join(paths)}" for what, paths in wrong.items() if paths)


def test_the_table_check_sees_a_missing_module_a_stale_name_and_a_folder_of_none(tmp_path):
    """Known answers on a tree of its own: a module of no row, a row's file that is gone, a module named only in
    another folder's row, an `__init__.py` with code (named) and one with only a docstring (the folder)."""
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    for name, source in {"pkg/__init__.py": '"""Only a docstring."""\n__all__ = []\n', "pkg/a.py": '"""A."""\n',
                         "pkg/b.py": '"""B."""\n', "pkg/sub/__init__.py": '"""Code."""\nX = 1\n',
                         "pkg/sub/c.py": '"""C."""\n'}.items():
        (tmp_path / name).write_text(source)
    table = """## Folders

| folder | what lives there |
|---|---|
| `pkg/` | `a.py` (a), `gone.py` (moved away) |
| `pkg/sub/` | `c.py`, and `pkg/b.py` named from another row |
| `pkg/old/` | nothing left |

## Next
"""
    assert check_table(table, tmp_path, ("pkg",)) == {
        "not named": ["pkg/b.py", "pkg/sub/__init__.py"], "named but absent": ["pkg/gone.py (row pkg/)"],
        "rows of no folder of modules": ["pkg/old/"]}
    fixed = table.replace("`gone.py` (moved away)", "`b.py`").replace("`c.py`", "`__init__.py`, `c.py`")
    assert check_table(fixed.replace("| `pkg/old/` | nothing left |\n", ""), tmp_path, ("pkg",)) == {
        "not named": [], "named but absent": [], "rows of no folder of modules": []}


# a path from the repository's root to a module or a docs page; not inside a longer path (site-packages/bench/…)
PATH = re.compile(r"(?<![\w/.-])((?:bench|backends|benchmarks)/[\w/.-]*\.py|docs/[\w/.-]*\.md)\b")
# a module of the project by dotted name, not an attribute of a longer name (`self.bench.x`) nor a file's name
DOTTED = re.compile(r"(?<![\w./-])((?:bench|backends)(?:\.\w+)+)(?!\w)(?<!\.md)(?<!\.yaml)(?<!\.py)")


def _texts(root: Path) -> dict[Path, str]:
    files = [p for package in (*PACKAGES, "tests") for p in (root / package).rglob("*.py")
             if p != Path(__file__)]  # this file names missing files on purpose, for its known answers
    files += [p for page in PAGES for p in ([root / page] if page.endswith(".md") else (root / page).rglob("*.md"))]
    return {p: p.read_text() for p in files}


def _prose(path: Path, text: str) -> str:
    """The comments and strings of a Python source (where a module is named in words), or a page's whole text."""
    if path.suffix != ".py":
        return text
    tokens = tokenize.generate_tokens(io.StringIO(text).readline)
    return "\n".join(t.string for t in tokens if t.type in (tokenize.COMMENT, tokenize.STRING))


def _is_module(dotted: str, root: Path) -> bool:
    """Whether `dotted` starts with a module or package of the project past its top package (the rest may be
    its attributes: `bench.core.cache.cache_dir`); a dunder (`bench.__file__`) is an attribute too."""
    parts = dotted.split(".")
    if parts[1].startswith("__"):
        return True
    head = root.joinpath(*parts[:2])
    return head.with_suffix(".py").is_file() or (head / "__init__.py").is_file()


def missing_names(texts: dict[Path, str], root: Path) -> list[str]:
    """`FILE: NAME` for every path or dotted module name in `texts` that names nothing in the tree under `root`
    (dotted names in the tests are left out: a test names modules that do not exist on purpose)."""
    missing = []
    for path, text in texts.items():
        where = path.relative_to(root).as_posix()
        missing += [f"{where}: {name}" for name in sorted(set(PATH.findall(text))) if not (root / name).is_file()]
        if not where.startswith("tests/"):
            missing += [f"{where}: {name}" for name in sorted(set(DOTTED.findall(_prose(path, text))))
                        if not _is_module(name, root)]
    return missing


def test_every_file_and_module_the_docs_and_the_source_name_exists():
    missing = missing_names(_texts(ROOT), ROOT)
    assert not missing, "names of files or modules that are not in the tree:\n" + "\n".join(missing)


def test_the_name_check_sees_a_moved_file_and_a_moved_module(tmp_path):
    (tmp_path / "bench" / "measure").mkdir(parents=True)
    for name in ("__init__.py", "measure/__init__.py", "measure/profiling.py"):
        (tmp_path / "bench" / name).write_text('"""A module."""\n')
    source = tmp_path / "bench" / "user.py"
    source.write_text('"""See bench/measure/profiling.py, not bench/profiling.py."""\n'
                      "bench = object()  # bench.profiling traces it; bench.measure.profiling.summarize reads it\n"
                      "x = bench.tree  # code, not a name in words\n")
    page = tmp_path / "docs" / "page.md"
    page.parent.mkdir()
    page.write_text("Read docs/page.md and docs/gone.md; site-packages/bench/x.py is not ours.\n")
    assert missing_names({source: source.read_text(), page: page.read_text()}, tmp_path) == [
        "bench/user.py: bench/profiling.py", "bench/user.py: bench.profiling", "docs/page.md: docs/gone.md"]
