"""`model`, `backends` and `env`: the built-in models, the backend registry, managed side environments."""
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
