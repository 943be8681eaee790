"""The stable base every backend builds on: the one clock, the cache, optional imports, what ran.

`backends/` imports from here and from nowhere else in `bench`; nothing here imports `backends` or
another part of `bench` (tests/test_architecture.py checks both). Keep it small and slow to change.

- `deps`: `require()` for optional packages, and the two ways a case can be skipped
  (`MissingDependency`: a pip extra is absent; `NotSupportedHere`: this hardware cannot run it).
- `timing`: the one timing primitive (`Clock`, CUDA events on a GPU).
- `cache`: the on-disk cache (`cache_dir`), atomic builds behind a cross-process lock, file digests.
- `description`: `BackendDescription`, the typed answer of `Backend.describe()`.
- `sideenv`: where the managed side environments live and whether one is complete (bench/exec/envs.py builds them).
- `process`: child processes that die with their parent, work run in a child so Ctrl-C stops it at once.
- `markdown`: user text escaped for Markdown (reports and the gate's alerts).
- `registry`: the one registry mechanism (backends, tasks, built-in models, server kinds).
"""
