"""`compare` and `history`: the regression gate and the run history it draws baselines from."""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from bench.errors import BadInput, ExitCode


def _fraction(name: str, low: float, high: float):
    """An argparse type: a finite number strictly between low and high (nan, inf and 0 would switch the gate off)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, not {text!r}") from None
        if not (math.isfinite(value) and low < value < high):
            raise argparse.ArgumentTypeError(f"{name} must be a finite number above {low:g} and below {high:g}, "
                                             f"not {text}")
        return value
    return parse


# How compare's own files begin (bench/gate/result.py's JSON, bench/gate/alerts.py's headline): an existing file
# that begins so is an earlier comparison, which --json or --markdown may replace without --force
JSON_SIGNATURE = rb'\A\{\s*"format_version"\s*:\s*\d+\s*,\s*"baseline"\s*:'
MARKDOWN_SIGNATURE = rb"\A### [^\n]{0,16}bench compare "


def open_run(spec: str, results_dir: Path, history_db: Path | None):
    """A run by id, directory, or `last:BRANCH` (the newest run on BRANCH in the history database)."""
    from bench.gate import history
    from bench.records.rundir import load_run

    if spec.startswith("last:"):
        return load_run(history.last_run_path(spec.split(":", 1)[1], history.db_path(history_db, results_dir)))
    return load_run(spec, results_dir)


def cmd_compare(args) -> ExitCode:
    from bench.gate import alerts, history
    from bench.gate.compare import compare_runs, compare_within, confirm, rule_from
    from bench.gate.machine import Mode
    from bench.gate.result import read_result, write_result
    from bench.records import outputs

    places = {"results": args.results_dir, "reports": args.reports_dir}
    if args.markdown and args.append:  # before any work: never into a run, never over another's file
        outputs.check(args.markdown, "--markdown", **places)
    elif args.markdown:
        outputs.check_file(args.markdown, "--markdown", signature=MARKDOWN_SIGNATURE, force=args.force, **places)
    if args.json:
        outputs.check_file(args.json, "--json", signature=JSON_SIGNATURE, force=args.force, **places)
    runs = list(args.runs)
    if args.baseline:
        runs.insert(0, args.baseline)
    if len(runs) not in (1, 2):
        raise BadInput("compare: give BASELINE CURRENT (run ids, run directories or last:BRANCH) to compare two "
                       "runs, or one RUN to compare its variants with its reference")
    opened = [open_run(spec, args.results_dir, args.history_db) for spec in runs]
    rule = rule_from(opened[-1], threshold=args.threshold, alpha=args.alpha, seed=args.seed)
    if len(opened) == 1:
        result = compare_within(opened[0], rule)
    else:
        db = history.db_path(args.history_db, args.results_dir)
        spread = history.noise_lookup(db, opened[1]) if db.exists() else None
        mode: Mode = "ignore" if args.ignore_machine_state else "confirm" if args.confirming else "compare"
        result = compare_runs(opened[0], opened[1], rule, spread, machine_mode=mode)
    if args.confirming:
        result = confirm(read_result(args.confirming, "--confirming"), result)
    text = alerts.markdown(result)
    if args.markdown and args.append:
        outputs.append(args.markdown, text, "--markdown", **places)
    elif args.markdown:
        outputs.write(args.markdown, text, "--markdown", signature=MARKDOWN_SIGNATURE, force=args.force, **places)
    if args.json:
        outputs.write(args.json, write_result(result), "--json", signature=JSON_SIGNATURE, force=args.force, **places)
    print(text)
    message = alerts.notify(result, args.notify)
    if message:
        print(message, file=sys.stderr)
    return result.exit_code


def cmd_history_record(args) -> ExitCode:
    from bench.gate import history
    from bench.records import outputs
    from bench.records.rundir import load_run

    db = outputs.check(history.db_path(args.db, args.results_dir), "--db" if args.db else "the history database",
                       args.results_dir, args.reports_dir)
    row = history.record_run(load_run(args.run, args.results_dir), db, branch=args.branch, commit=args.commit)
    print(f"recorded {row['run_id']} (branch {row['branch']}, commit {row['git_commit'][:12]}, "
          f"{row['n_cases']} cases) in {db}")
    return ExitCode.OK


def cmd_history_list(args) -> ExitCode:
    from bench.gate import history

    for r in history.list_runs(history.db_path(args.db, args.results_dir), args.suite):
        print(f"{r['run_id']:40} {r['suite'] or '':12} {r['branch']:20} {r['git_commit'][:12]}  "
              f"{r['n_cases']} cases, {r['n_failed']} failed")
    return ExitCode.OK


def add_commands(sub) -> list:
    """Register compare and history; returns the parsers that take --results-dir/--reports-dir."""
    compare = sub.add_parser("compare", help="regression gate: compare CURRENT with BASELINE (exit 1 on regression)")
    compare.add_argument("runs", nargs="+", metavar="RUN", help="BASELINE CURRENT: run ids, run directories, "
                         "or last:BRANCH (the last run recorded on BRANCH in the history database); or one RUN: "
                         "each variant against the run's reference, from their interleaved rounds")
    compare.add_argument("--baseline", help="the baseline (then give only CURRENT), e.g. last:main")
    compare.add_argument("--threshold", type=_fraction("--threshold", 0, 10),
                         help="default relative threshold (suite: regression.threshold, else 0.05)")
    compare.add_argument("--alpha", type=_fraction("--alpha", 0, 1), default=0.05,
                         help="the intervals are (1 - alpha) confidence intervals (default 0.05)")
    compare.add_argument("--confirming", type=Path, metavar="FILE",
                         help="the --json of an earlier comparison whose flagged cases this run re-measured: say "
                              "which regressions the re-measurement confirms")
    compare.add_argument("--ignore-machine-state", action="store_true",
                         help="judge timings by their intervals alone, even where the two runs' machine states "
                              "differ materially (other processes' load, clocks; docs/comparing-and-ci.md); the "
                              "output says it was used")
    compare.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    compare.add_argument("--markdown", type=Path, metavar="FILE", help="write the Markdown alert here "
                         "(e.g. $GITHUB_STEP_SUMMARY)")
    compare.add_argument("--append", action="store_true", help="append to the --markdown file (created when "
                         "missing; nothing is replaced, so --force is not needed)")
    compare.add_argument("--json", type=Path, metavar="FILE", help="write the full comparison as JSON")
    compare.add_argument("--force", action="store_true", help="replace an existing --json or --markdown file that "
                         "is not an earlier comparison (a file inside a run is always refused)")
    compare.add_argument("--notify", choices=["problem", "always"], default="problem",
                         help="when $BENCH_WEBHOOK_URL is set, POST {\"text\": ...} on a non-zero exit (default) "
                              "or always")
    compare.add_argument("--history-db", type=Path, help="for last:BRANCH (default: $BENCH_HISTORY_DB or "
                         "<results-dir>/history.sqlite)")
    compare.set_defaults(func=cmd_compare)

    history = sub.add_parser("history", help="record runs in a local SQLite history; list them")
    history_sub = history.add_subparsers(dest="history_command", required=True)
    record = history_sub.add_parser("record", help="record a finished run (branch/commit from its fingerprint)")
    record.add_argument("run", metavar="RUN", help="run id or run directory")
    record.add_argument("--branch", help="override the branch (default: the run's git branch)")
    record.add_argument("--commit", help="override the commit (default: the run's git sha)")
    record.set_defaults(func=cmd_history_record)
    listing = history_sub.add_parser("list", help="list recorded runs")
    listing.add_argument("--suite", help="only runs of this suite")
    listing.set_defaults(func=cmd_history_list)
    for p in (record, listing):
        p.add_argument("--db", type=Path, help="database (default: $BENCH_HISTORY_DB or <results-dir>/history.sqlite)")
    return [compare, record, listing]
