"""`run`, `profile` and `validate`: suites in, results and reports out."""
from __future__ import annotations

import sys
from pathlib import Path

from bench.errors import BadInput, ExitCode

PROFILE_FLAGS = ("warmup", "steps", "top", "record_shapes", "profile_memory", "with_stack")


def _execute(args, suite, cases, run, profile_source: str | None = None) -> ExitCode:
    """Run a suite's cases into `run` (new or resumed), then write its reports."""
    from bench.cli.report import write_reports
    from bench.models import resolve_model
    from bench.records.rundir import load_run
    from bench.report.markdown import terminal_table
    from bench.run import runner

    print(f"run {run.run_id}: {len(cases)} cases -> {run.path}", file=sys.stderr)
    with run.writer():
        for model in suite.models:  # build built-in models once, here, rather than inside a timed case
            resolve_model(model, log=lambda line: print(line, file=sys.stderr))
        try:
            records = runner.run_cases(cases, run, retry_failed=args.retry_failed)
        except KeyboardInterrupt:
            print(f"\ninterrupted: finished cases are kept in {run.path}; "
                  f"resume with: python -m bench run --resume {run.run_id}", file=sys.stderr)
            return ExitCode.INTERRUPTED
    loaded = load_run(run)
    print(terminal_table(loaded))
    write_reports(args, [loaded])
    if profile_source is not None:
        traces = run.path / "traces"
        print(f"traces: {traces} (view: tensorboard --logdir {traces}, PyTorch Profiler tab)")
    return ExitCode.CASE_FAILED if any(r.status == "failed" for r in records) else ExitCode.OK


def _new_run(args, suite_path: Path, profile: dict | None):
    from bench.records.rundir import RunDir, check_plain_name, new_run_id
    from bench.run import runner
    from bench.suite import load_suite

    suite, cases = load_suite(suite_path, profile=profile)
    if args.run_id:
        run_id = check_plain_name(args.run_id, "--run-id")
    else:
        run_id = new_run_id(check_plain_name(suite.name, "suite name"))
    run = RunDir(args.results_dir, run_id)
    if run.exists():
        raise BadInput(f"run '{run.run_id}' already exists in {args.results_dir}; use --resume {run.run_id}")
    runner.start_run(suite_path, suite.name, cases, run, suite.regression)
    if profile is not None:  # what --resume and report read: the profiled suite
        _write_profiled_snapshot(run.suite_snapshot, suite, str(suite_path))
    return suite, cases, run


def cmd_run(args) -> ExitCode:
    from bench.records.rundir import RunDir, check_plain_name
    from bench.suite import load_suite

    if args.resume:
        run = RunDir(args.results_dir, check_plain_name(args.resume, "--resume"))
        if not run.exists():
            raise BadInput(f"--resume: no run '{args.resume}' in {args.results_dir}")
        suite, cases = load_suite(run.suite_snapshot)
        return _execute(args, suite, cases, run)
    if not args.suite:
        raise BadInput("run: give a suite file, or --resume RUN_ID")
    return _execute(args, *_new_run(args, Path(args.suite), None))


def _write_profiled_snapshot(snapshot: Path, suite, source: str) -> None:
    import yaml

    text = yaml.safe_dump(suite.model_dump(exclude_unset=True), sort_keys=False)
    snapshot.write_text(f"# {source} with profiling forced on (python -m bench profile)\n{text}")


def cmd_profile(args) -> ExitCode:
    """`run` with profiling on for every latency case; SUITE_OR_RUN may name a run, whose suite is rerun."""
    from bench.records.rundir import RunDir

    source = Path(args.suite)
    previous = RunDir(args.results_dir, args.suite)
    if not source.exists() and "/" not in args.suite and previous.exists():
        source = previous.suite_snapshot
    profile = {k: getattr(args, k) for k in PROFILE_FLAGS if getattr(args, k) is not None}
    args.retry_failed = False
    suite, cases, run = _new_run(args, source, profile)
    return _execute(args, suite, cases, run, profile_source=str(source))


def cmd_validate(args) -> ExitCode:
    from bench.suite import load_suite

    suite, cases = load_suite(args.suite)
    print(f"{args.suite}: suite '{suite.name}' is valid: {len(cases)} cases")
    for case in cases:
        print(f"  {case.id}")
    return ExitCode.OK


def add_commands(sub) -> list:
    """Register run, profile and validate; returns the parsers that take --results-dir/--reports-dir."""
    run = sub.add_parser("run", help="run a suite (each case in its own process), then write its report")
    run.add_argument("suite", nargs="?", help="suite YAML file, e.g. suites/smoke.yaml")
    run.add_argument("--resume", metavar="RUN_ID", help="finish an interrupted run; finished cases are kept")
    run.add_argument("--retry-failed", action="store_true", help="with --resume: run failed cases again")
    run.add_argument("--run-id", help="name of the new run (default: <suite>-<UTC time>)")
    run.set_defaults(func=cmd_run)

    profile = sub.add_parser("profile", help="run a suite with profiling on: after measuring each latency case, "
                             "trace it into results/<run-id>/traces/ and report where the time goes")
    profile.add_argument("suite", metavar="SUITE_OR_RUN", help="suite YAML file, or a run id whose suite to rerun")
    profile.add_argument("--run-id", help="name of the new run (default: <suite>-<UTC time>)")
    profile.add_argument("--steps", type=int, help="profiled generations per case (default: suite's, else 2)")
    profile.add_argument("--warmup", type=int, help="profiler warm-up generations (default: suite's, else 1)")
    profile.add_argument("--top", type=int, help="operators listed in the report (default: suite's, else 10)")
    for flag in ("record-shapes", "profile-memory", "with-stack"):
        profile.add_argument(f"--{flag}", action="store_true", default=None, help="torch.profiler option")
    profile.set_defaults(func=cmd_profile)

    validate = sub.add_parser("validate", help="check a suite and list the cases it expands to")
    validate.add_argument("suite")
    validate.set_defaults(func=cmd_validate)
    return [run, profile]
