"""The git side of a bisect: the repository a suite lives in, its commits, and checked-out trees of them.

Every question goes to the `git` command line (no library). A commit's tree is a detached `git worktree` (hooks
off: a checkout runs no code of the repository); bench never changes the repository's own working copy.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from bench.errors import BadInput

NO_HOOKS = ("-c", "core.hooksPath=/dev/null")


class Repo:
    """A git repository's working copy, found from a path inside it."""

    def __init__(self, inside: Path) -> None:
        start = inside if inside.is_dir() else inside.parent
        if shutil.which("git") is None:
            raise BadInput("bisect needs the git command line, which is not installed")
        found = subprocess.run(["git", "-C", str(start), "rev-parse", "--show-toplevel"], capture_output=True,
                               text=True, check=False)
        if found.returncode != 0:
            raise BadInput(f"{inside}: not inside a git repository (bisect checks out the commits of the repository "
                           f"the suite lives in)")
        self.root = Path(found.stdout.strip()).resolve()

    def git(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """`git ARGS` in the repository; a failure with `check` is a RuntimeError with git's message."""
        done = subprocess.run(["git", "-C", str(self.root), *NO_HOOKS, *args], capture_output=True, text=True,
                              check=False)
        if check and done.returncode != 0:
            raise RuntimeError(f"git {' '.join(args)}: {done.stderr.strip()}")
        return done

    def commit(self, rev: str, what: str) -> str:
        """The full sha of the commit `rev` names (BadInput naming `what` when it names none)."""
        if rev.startswith("-"):
            raise BadInput(f"{what} {rev!r}: not a commit")
        done = self.git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", check=False)
        if done.returncode != 0:
            raise BadInput(f"{what} {rev!r}: no such commit in {self.root}")
        return done.stdout.strip()

    def is_ancestor(self, older: str, newer: str) -> bool:
        return self.git("merge-base", "--is-ancestor", older, newer, check=False).returncode == 0

    def path(self, good: str, bad: str) -> list[str]:
        """The commits from `good` to `bad`, both included, oldest first: `bad`'s first-parent line back to the
        first commit that descends from `good` (merged branches count as their merge commit)."""
        listed = self.git("rev-list", "--first-parent", "--ancestry-path", "--reverse", f"{good}..{bad}").stdout
        return [good, *listed.split()]

    def subject(self, sha: str) -> str:
        return self.git("log", "-1", "--format=%s", sha).stdout.strip()

    def relative(self, path: Path, what: str) -> str:
        """`path` relative to the repository's root, as git names it (BadInput when it lies outside)."""
        try:
            return path.resolve().relative_to(self.root).as_posix()
        except ValueError:
            raise BadInput(f"{what} {path}: outside the repository {self.root}") from None

    def uncommitted(self, relative: str) -> str:
        """Why the working copy's `relative` differs from what the commits hold ('' when it does not)."""
        if self.git("ls-files", "--error-unmatch", "--", relative, check=False).returncode != 0:
            return "is not committed (bisect runs the files the commits hold)"
        if self.git("status", "--porcelain", "--", relative).stdout.strip():
            return "has uncommitted changes (bisect runs the committed file: commit or stash them)"
        return ""

    def add_tree(self, sha: str, where: Path) -> Path:
        """A detached worktree of `sha` at `where`, reused when one is already there (after a kill)."""
        if where.exists():
            head = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True,
                                  check=False)
            if head.returncode == 0 and head.stdout.strip() == sha:
                return where
            self.remove_tree(where)
        where.parent.mkdir(parents=True, exist_ok=True)
        self.git("worktree", "add", "--detach", "--force", str(where), sha)
        return where

    def remove_tree(self, where: Path) -> None:
        self.git("worktree", "remove", "--force", str(where), check=False)
        shutil.rmtree(where, ignore_errors=True)
        self.git("worktree", "prune", check=False)
