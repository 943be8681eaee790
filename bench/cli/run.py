"""`run`, `profile` and `validate`: suites in, results and reports out."""
from __future__ import annotations

import os
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.errors import BadInput, ExitCode

PROFILE_FLAGS = ("warmup", "steps", "top", "record_shapes", "profile_memory", "with_stack")


def _execute(args, suite, cases, run, profile_source: str | None = None) -> ExitCode:
    """Run a suite's cases into `run` (new or resumed), then write its reports."""
    from bench.cli.report import write_reports
    from bench.records.rundir import load_run
    from bench.report.markdown import terminal_table
    from bench.run import runner
    from bench.serving import run as serving_task  # noqa: F401 - registers the serving task (bench/exec/tasks.py)

    print(f"run {run.run_id}: {len(cases)} cases -> {run.path}", file=sys.stderr)
    executor = _executor(args, suite)
    with run.writer():
        if executor is None:  # build models and conversions once, here, rather than inside a timed case
            _prepare_here(cases)
        records = runner.run_cases(cases, run, retry_failed=args.retry_failed, executor=executor)
    loaded = load_run(run)
    print(terminal_table(loaded))
    if getattr(args, "no_report", False):
        print(f"no report written (--no-report): python -m bench report {run.run_id}", file=sys.stderr)
    else:
        write_reports(args, [loaded])
    if profile_source is not None:
        traces = run.path / "traces"
        print(f"traces: {traces} (view: tensorboard --logdir {traces}, PyTorch Profiler tab)")
    _say_contended(loaded.records)
    return ExitCode.CASE_FAILED if any(r.status == "failed" for r in records) else ExitCode.OK


def _say_contended(records) -> None:
    """The run's last word on its machine: how many latency cases were measured while others kept the CPUs busy."""
    from bench.gate.machine import contended_cases
    from bench.measure.machine import CONTENDED_CPUS

    contended, measured = contended_cases(records)
    if measured:
        print(f"latency cases measured contended (other processes kept >= {CONTENDED_CPUS:g} CPU busy): {contended} "
              f"of {measured}" + ("; compared with a run measured quieter, their timings are inconclusive"
                                  if contended else ""), file=sys.stderr)


def _stoppable(command: Callable[[Any, list], ExitCode], args) -> ExitCode:
    """`command(args, started)` where Ctrl-C or SIGTERM at any moment stops it with exit code 130 or 143 and says
    what is left: once the run exists, where its finished cases are and how to resume it; a run directory
    interrupted while it was being made (no run.json yet: nothing measured) is removed. `command` appends its
    RunDir to `started` just before it creates it (or once --resume has found it)."""
    started: list = []
    return stoppable(args, lambda: command(args, started),
                     lambda terminated: _interrupted(started[-1] if started else None, terminated))


def stoppable(args, body: Callable[[], ExitCode], stopped: Callable[[bool], ExitCode]) -> ExitCode:
    """`body()`, where Ctrl-C or SIGTERM at any moment raises KeyboardInterrupt; then `stopped(terminated)` says
    what is left and gives the exit code (143 rather than 130 for SIGTERM), with any further signal ignored.

    Nothing bench runs in `body` waits on native code (the preparation runs in a child: bench/run/prepare.py), so
    the interrupt is raised at once. Python drops a KeyboardInterrupt raised inside a finalizer (a `__del__`, a
    weakref callback) with an "Exception ignored" line: in case that happened, it is raised again every AGAIN_S
    until `body` has stopped. Once it has, a signal has nothing left to stop: it is ignored, and when the process
    exits next (`args.exiting`, set by `python -m bench`) it stays ignored while Python finalizes (which would
    otherwise die of it, exit -2, after the last line was written)."""
    came: list[int] = []
    over: list[bool] = []

    def stop(signum, frame):
        if over:
            return
        if not came:
            signal.setitimer(signal.ITIMER_REAL, AGAIN_S, AGAIN_S)
        came.append(signum)
        raise KeyboardInterrupt

    def again(signum, frame):
        if not over:
            raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, handler) for sig, handler in
                ((signal.SIGINT, stop), (signal.SIGTERM, stop), (signal.SIGALRM, again))}
    try:
        return body()
    except KeyboardInterrupt:
        over.append(True)
        return stopped(signal.SIGTERM in came)
    finally:
        over.append(True)  # from here on `stop` ignores signals, until they are handed back below
        signal.setitimer(signal.ITIMER_REAL, 0)
        exiting = getattr(args, "exiting", False)
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_IGN if exiting and sig != signal.SIGALRM else handler)


AGAIN_S = 1.0


def _interrupted(run, terminated: bool) -> ExitCode:
    from bench.core.process import forget_unhandled_interrupt

    forget_unhandled_interrupt()  # our exit code stands (see bench/core/process.py)
    word = "terminated" if terminated else "interrupted"
    if run is not None and run.exists():
        print(f"\n{word}: finished cases are kept in {run.path}; resume with: python -m bench run --resume "
              f"{run.run_id}", file=sys.stderr)
    elif run is not None and run.half_made():
        shutil.rmtree(run.path, ignore_errors=True)
        print(f"\n{word} while run {run.run_id} was being created: nothing was measured, its directory is removed",
              file=sys.stderr)
    else:
        print(f"\n{word} before the run started: nothing was written", file=sys.stderr)
    return ExitCode.TERMINATED if terminated else ExitCode.INTERRUPTED


def _selected(cases, args):
    """The cases --only / --only-from name (case ids or variant labels), with the reference case of each chosen
    latency case's workload, so its paired rounds against the reference are measured too."""
    names = set(getattr(args, "only", None) or [])
    if getattr(args, "only_from", None):
        from bench.gate.result import read_result

        names |= set(read_result(Path(args.only_from), "--only-from").flagged)
    if not names and not getattr(args, "only_from", None):
        return cases
    chosen = [c for c in cases if c.id in names or c.variant in names]
    if not chosen:
        raise BadInput(f"--only/--only-from: no case of the suite has the id or label {', '.join(sorted(names))}"
                       if names else f"--only-from {args.only_from}: the comparison flagged no case")
    groups = {(c.model, c.workload) for c in chosen if c.task == "latency"}
    references = [c for c in cases if c.task == "latency" and c.variant == c.reference
                  and (c.model, c.workload) in groups]
    return [c for c in cases if c in chosen or c in references]


def _prepare_here(cases) -> None:
    from bench.run.prepare import prepare_here

    for note in prepare_here(cases, log=lambda line: print(line, file=sys.stderr)):
        print(f"note: {note}", file=sys.stderr)


def _executor(args, suite):
    """None for the local executor; the Ray executor (imported only then) for --executor ray."""
    if getattr(args, "executor", "local") != "ray":
        return None
    from bench.run.cluster.ray_executor import RayExecutor

    return RayExecutor(args.address, suite.cluster)


def _shard(args, cases):
    """The cases of this shard (all of them without --shard), and its ShardInfo for run.json."""
    if getattr(args, "shard", None) is None:
        return cases, None
    from bench.run.shard import parse, shard_cases, shard_info

    index, count = parse(args.shard)
    return shard_cases(cases, index, count), shard_info(cases, index, count)


def check_writable(directory: Path, what: str) -> None:
    """Fail before running anything when `directory` cannot be created or written."""
    existing = Path(directory).resolve()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise BadInput(f"{what} {directory}: cannot write under {existing}")


def _new_run(args, suite_path: Path, profile: dict | None, started: list):
    from bench.records import outputs
    from bench.records.rundir import RunDir, check_plain_name, new_run_id
    from bench.run import runner
    from bench.suite import load_suite

    models = getattr(args, "models", None)
    suite, cases = load_suite(suite_path, profile=profile, models=models, max_cases=_max_cases(args))
    cases, shard = _shard(args, _selected(cases, args))
    check_writable(args.results_dir, "--results-dir")
    check_writable(args.reports_dir, "--reports-dir")
    if args.run_id is not None:
        run_id = check_plain_name(args.run_id, "--run-id")
    else:
        run_id = new_run_id(check_plain_name(suite.name, "suite name"))
    outputs.check_run_places(args.results_dir, args.reports_dir, run_id)
    run = RunDir(args.results_dir, run_id)
    taken = run.taken()  # held by another run, half made, or finished; RunDir.create checks again, atomically
    if taken:
        raise BadInput(taken)
    # what --resume and report read: the suite as it runs (profiling forced on by `bench profile`, --model's models)
    snapshot = suite_path.read_bytes() if profile is None and not models else \
        _forced_snapshot(suite, str(suite_path), profile is not None, models)
    started.append(run)
    runner.start_run(suite_path, snapshot, suite.name, cases, run, suite.regression, shard,
                     _model_override(suite_path, models))
    return suite, cases, run


def _model_override(suite_path: Path, models: list[str] | None):
    """What run.json says when --model replaced the suite file's models (None without --model)."""
    if not models:
        return None
    from bench.records.schema import ModelOverride
    from bench.records.yaml_lines import read_yaml

    listed = read_yaml(suite_path)[0].get("models")
    return ModelOverride(models=list(models), suite_models=[str(m) for m in listed] if isinstance(listed, list) else [])


def cmd_run(args) -> ExitCode:
    return _stoppable(_run_command, args)


def _run_command(args, started: list) -> ExitCode:
    from bench.records import outputs
    from bench.records.rundir import RunDir, check_plain_name
    from bench.suite import load_suite

    if args.executor == "ray":  # a missing package fails here, before anything is written
        from bench.run.cluster.ray_executor import import_ray

        import_ray()
    if args.resume is not None:
        if args.models:
            raise BadInput("--model with --resume: a resumed run keeps the models it started with")
        run = RunDir(args.results_dir, check_plain_name(args.resume, "--resume")).require("--resume")
        started.append(run)
        _check_unedited(run, args.allow_edited_suite)
        meta = run.meta()
        planned = len(meta.shard.suite_case_ids) if meta.shard is not None else len(meta.case_ids)
        suite, cases = load_suite(run.suite_snapshot, max_cases=max(_max_cases(args), planned))  # as it started
        if not args.allow_edited_suite:  # the run's own cases: what --only and --shard chose when it started
            cases = [c for c in cases if c.id in set(meta.case_ids)]
        elif meta.shard is not None:  # an edited suite: this shard's share of it
            from bench.run.shard import shard_cases

            cases = shard_cases(cases, meta.shard.index, meta.shard.count)
        check_writable(args.reports_dir, "--reports-dir")
        outputs.check_reports(args.reports_dir, run.run_id)
        return _execute(args, suite, cases, run)
    if not args.suite:
        raise BadInput("run: give a suite file, or --resume RUN_ID")
    return _execute(args, *_new_run(args, Path(args.suite), None, started))


def _check_unedited(run, allowed: bool) -> None:
    """A run finishes the suite it started with: an edited snapshot would mix two suites in one run."""
    import hashlib

    recorded = run.meta().suite_sha256
    if recorded and not allowed and hashlib.sha256(run.snapshot_bytes()).hexdigest() != recorded:
        raise BadInput(f"{run.suite_snapshot} changed since run '{run.run_id}' started: resuming would mix two "
                       f"suites in one run. Start a new run, or pass --allow-edited-suite to run what the edited "
                       f"suite adds")


def _forced_snapshot(suite, source: str, profiled: bool, models: list[str] | None) -> bytes:
    """The suite as it runs, when the command line changed it: profiling forced on, --model's models."""
    import yaml

    text = yaml.safe_dump(suite.model_dump(exclude_unset=True), sort_keys=False)
    changes = (["profiling forced on (python -m bench profile)"] if profiled else []) + \
        ([f"models replaced by --model {' --model '.join(models)}"] if models else [])
    return f"# {source} with {' and '.join(changes)}\n{text}".encode()


def cmd_profile(args) -> ExitCode:
    """`run` with profiling on for every latency case; SUITE_OR_RUN may name a run, whose suite is rerun."""
    return _stoppable(_profile_command, args)


def _profile_command(args, started: list) -> ExitCode:
    from bench.records.rundir import RunDir

    source = Path(args.suite)
    previous = RunDir(args.results_dir, args.suite)
    if not source.exists() and "/" not in args.suite and previous.exists():
        source = previous.suite_snapshot
    profile = {k: getattr(args, k) for k in PROFILE_FLAGS if getattr(args, k) is not None}
    args.retry_failed, args.allow_edited_suite = False, False
    suite, cases, run = _new_run(args, source, profile, started)
    return _execute(args, suite, cases, run, profile_source=str(source))


def cmd_merge(args) -> ExitCode:
    from bench.cli.report import write_reports
    from bench.records import outputs
    from bench.records.merge import merge_runs
    from bench.records.rundir import RunDir, check_plain_name, find_run, load_run

    target = RunDir(args.results_dir, check_plain_name(args.run_id, "--run-id"))
    outputs.check_run_places(args.results_dir, args.reports_dir, target.run_id)
    sources = [find_run(spec, args.results_dir) for spec in args.runs]
    merge_runs(sources, target)
    loaded = load_run(target)
    print(f"merged {len(sources)} runs into {target.path}: {len(loaded.records)} of {len(loaded.meta.case_ids)} "
          f"cases recorded" + (f", {len(loaded.missing)} missing" if loaded.missing else ""), file=sys.stderr)
    write_reports(args, [loaded])
    return ExitCode.CASE_FAILED if any(r.status == "failed" for r in loaded.records) else ExitCode.OK


def _max_cases(args) -> int:
    from bench.suite import MAX_CASES

    return getattr(args, "max_cases", None) or MAX_CASES


def _positive(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    import argparse

    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text!r}")
    return int(text)


def _add_max_cases_argument(parser) -> None:
    parser.add_argument("--max-cases", type=_positive, metavar="N", help="refuse a suite that expands to more than N "
                        "cases, counted before anything is expanded (default: 100,000; docs/suites.md)")


def cmd_validate(args) -> ExitCode:
    from bench.suite import load_suite

    suite, cases = load_suite(args.suite, models=args.models, max_cases=_max_cases(args))
    print(f"{args.suite}: suite '{suite.name}' is valid: {len(cases)} cases")
    if args.models:
        print(f"  models replaced by --model: {', '.join(args.models)}")
    for case in cases:
        print(f"  {case.id}")
    return ExitCode.OK


def _add_selection_arguments(parser) -> None:
    parser.add_argument("--only", action="append", metavar="CASE_OR_LABEL",
                        help="run only these cases (case ids or variant labels; repeatable), with their references")
    parser.add_argument("--only-from", metavar="COMPARE_JSON",
                        help="run only the cases a comparison flagged (its --json file): the nightly's re-measurement")


def _add_model_argument(parser) -> None:
    parser.add_argument("--model", action="append", dest="models", metavar="PATH_OR_HUB_ID",
                        help="run this model instead of the suite's models (repeatable: each one replaces the "
                        "suite's list); a built-in name, a local directory or a hub id. The run records it")


def add_commands(sub) -> list:
    """Register run, profile and validate; returns the parsers that take --results-dir/--reports-dir."""
    run = sub.add_parser("run", help="run a suite (each case in its own process), then write its report")
    run.add_argument("suite", nargs="?", help="suite YAML file, e.g. suites/smoke.yaml")
    run.add_argument("--resume", metavar="RUN_ID", help="finish an interrupted run; finished cases are kept")
    run.add_argument("--retry-failed", action="store_true", help="with --resume: run failed cases again")
    run.add_argument("--allow-edited-suite", action="store_true",
                     help="with --resume: accept a suite.yaml edited since the run started")
    _add_selection_arguments(run)
    run.add_argument("--run-id", help="name of the new run (default: <suite>-<UTC time>)")
    run.add_argument("--executor", choices=("local", "ray"), default="local",
                     help="local: units one after another here (default); ray: each unit a task on a Ray cluster "
                     "(pip install 'bench[ray]')")
    run.add_argument("--address", help="with --executor ray: the cluster's address (HOST:PORT of its head; "
                     "default: RAY_ADDRESS, else a Ray instance started here)")
    run.add_argument("--shard", metavar="I/N", help="run only shard I of N of the suite's units (a deterministic "
                     "partition, for CI matrices; combine the shards with bench merge)")
    _add_model_argument(run)
    _add_max_cases_argument(run)
    run.add_argument("--no-report", action="store_true", help="record only, write no Markdown or HTML report "
                     "(later: python -m bench report RUN_ID); bench bisect's rounds run this way")
    run.set_defaults(func=cmd_run)

    merge = sub.add_parser("merge", help="merge runs of one suite (the shards of run --shard) into a new run")
    merge.add_argument("runs", nargs="+", metavar="RUN", help="run ids or run directories")
    merge.add_argument("--run-id", required=True, help="name of the merged run")
    merge.set_defaults(func=cmd_merge)

    profile = sub.add_parser("profile", help="run a suite with profiling on: after measuring each latency case, "
                             "trace it into results/<run-id>/traces/ and report where the time goes")
    profile.add_argument("suite", metavar="SUITE_OR_RUN", help="suite YAML file, or a run id whose suite to rerun")
    profile.add_argument("--run-id", help="name of the new run (default: <suite>-<UTC time>)")
    profile.add_argument("--steps", type=int, help="profiled generations per case (default: suite's, else 2)")
    profile.add_argument("--warmup", type=int, help="profiler warm-up generations (default: suite's, else 1)")
    profile.add_argument("--top", type=int, help="operators listed in the report (default: suite's, else 10)")
    for flag in ("record-shapes", "profile-memory", "with-stack"):
        profile.add_argument(f"--{flag}", action="store_true", default=None, help="torch.profiler option")
    _add_selection_arguments(profile)  # the nightly re-measures what it flagged with its profile (bench/gate/opdiff.py)
    _add_model_argument(profile)
    profile.set_defaults(func=cmd_profile)

    validate = sub.add_parser("validate", help="check a suite and list the cases it expands to")
    validate.add_argument("suite")
    _add_model_argument(validate)
    _add_max_cases_argument(validate)
    validate.set_defaults(func=cmd_validate)
    return [run, profile, merge]
