"""Command-line parts for comparing runs: `compare`, `history`, `export`, and the HTML step of `report`.

Parsing and dispatch only (bench/cli.py calls `add_commands`); the work is imported lazily, so
`python -m bench --help` stays light. Exit codes of `compare`: 0 no regression, 1 regression found,
2 bad input or usage, 3 a case failed in either run or there is no comparable data.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

EXIT_OK, EXIT_BAD_INPUT = 0, 2


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _cmd_compare(args) -> int:
    from bench import alerts
    from bench.compare import CompareError, compare_runs, open_run, rule_from

    runs = list(args.runs)
    if args.baseline:
        runs.insert(0, args.baseline)
    if len(runs) != 2:
        return _error("compare: give BASELINE CURRENT (run ids, run directories or last:BRANCH), "
                      "or --baseline BASELINE CURRENT")
    try:
        baseline, current = (open_run(spec, args.results_dir, args.history_db) for spec in runs)
        rule = rule_from(current, threshold=args.threshold, alpha=args.alpha, seed=args.seed)
    except CompareError as exc:
        return _error(str(exc))
    result = compare_runs(baseline, current, rule)
    text = alerts.markdown(result)
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        with open(args.markdown, "a" if args.append else "w") as f:
            f.write(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
    print(text)
    message = alerts.notify(result, args.notify)
    if message:
        print(message, file=sys.stderr)
    return result["exit_code"]


def _cmd_history_record(args) -> int:
    from bench import history

    run_dir = Path(args.run) if (Path(args.run) / "run.json").exists() else args.results_dir / args.run
    db = history.db_path(args.db, args.results_dir)
    try:
        row = history.record_run(run_dir, db, branch=args.branch, commit=args.commit)
    except history.HistoryError as exc:
        return _error(str(exc))
    print(f"recorded {row['run_id']} (branch {row['branch']}, commit {row['git_commit'][:12]}, "
          f"{row['n_cases']} cases) in {db}")
    return EXIT_OK


def _cmd_history_list(args) -> int:
    from bench import history

    try:
        rows = history.list_runs(history.db_path(args.db, args.results_dir), args.suite)
    except history.HistoryError as exc:
        return _error(str(exc))
    for r in rows:
        print(f"{r['run_id']:40} {r['suite'] or '':12} {r['branch']:20} {r['git_commit'][:12]}  "
              f"{r['n_cases']} cases, {r['n_failed']} failed")
    return EXIT_OK


def _cmd_export(args) -> int:
    from bench.export import export

    run_dir = Path(args.run) if (Path(args.run) / "run.json").exists() else args.results_dir / args.run
    if not (run_dir / "run.json").exists():
        return _error(f"no run '{args.run}' in {args.results_dir}")
    print(export(run_dir, args.format, args.output))
    return EXIT_OK


def html_step(args) -> int:
    """After the Markdown reports: one HTML file for the given runs (side by side when several)."""
    if args.no_html:
        return EXIT_OK
    from bench import html_report

    try:
        path = html_report.write_html(args.results_dir, args.reports_dir, args.run_ids, args.history_db)
    except html_report.MissingReportExtra as exc:
        print(f"html report not written: {exc}", file=sys.stderr)
        return EXIT_OK
    print(path)
    return EXIT_OK


def add_report_options(report) -> None:
    report.add_argument("--no-html", action="store_true", help="write only the Markdown report(s)")
    report.add_argument("--history-db", type=Path, help="plot trends from this history database "
                        "(default: $BENCH_HISTORY_DB or <results-dir>/history.sqlite, when it exists)")


def add_commands(sub) -> list:
    """Register compare, history and export; returns the parsers that take --results-dir."""
    compare = sub.add_parser("compare", help="regression gate: compare CURRENT with BASELINE (exit 1 on regression)")
    compare.add_argument("runs", nargs="+", metavar="RUN", help="BASELINE CURRENT: run ids, run directories, "
                         "or last:BRANCH (the last run recorded on BRANCH in the history database)")
    compare.add_argument("--baseline", help="the baseline (then give only CURRENT), e.g. last:main")
    compare.add_argument("--threshold", type=float, help="default relative threshold (suite: regression.threshold, "
                         "else 0.05)")
    compare.add_argument("--alpha", type=float, default=0.02, help="rank test significance level (default 0.02)")
    compare.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    compare.add_argument("--markdown", type=Path, metavar="FILE", help="write the Markdown alert here "
                         "(e.g. $GITHUB_STEP_SUMMARY)")
    compare.add_argument("--append", action="store_true", help="append to the --markdown file")
    compare.add_argument("--json", type=Path, metavar="FILE", help="write the full comparison as JSON")
    compare.add_argument("--notify", choices=["problem", "always"], default="problem",
                         help="when $BENCH_WEBHOOK_URL is set, POST {\"text\": ...} on a non-zero exit (default) "
                              "or always")
    compare.add_argument("--history-db", type=Path, help="for last:BRANCH (default: $BENCH_HISTORY_DB or "
                         "<results-dir>/history.sqlite)")
    compare.set_defaults(func=_cmd_compare)

    history = sub.add_parser("history", help="record runs in a local SQLite history; list them")
    history_sub = history.add_subparsers(dest="history_command", required=True)
    record = history_sub.add_parser("record", help="record a finished run (branch/commit from its fingerprint)")
    record.add_argument("run", metavar="RUN", help="run id or run directory")
    record.add_argument("--branch", help="override the branch (default: the run's git branch)")
    record.add_argument("--commit", help="override the commit (default: the run's git sha)")
    record.set_defaults(func=_cmd_history_record)
    listing = history_sub.add_parser("list", help="list recorded runs")
    listing.add_argument("--suite", help="only runs of this suite")
    listing.set_defaults(func=_cmd_history_list)
    for p in (record, listing):
        p.add_argument("--db", type=Path, help="database (default: $BENCH_HISTORY_DB or <results-dir>/history.sqlite)")

    export = sub.add_parser("export", help="export a run as pytest-benchmark JSON or CSV")
    export.add_argument("run", metavar="RUN", help="run id or run directory")
    export.add_argument("--format", required=True, choices=["pytest-benchmark", "csv"])
    export.add_argument("-o", "--output", type=Path, help="output file (default: <run dir>/export-<format>.json|csv)")
    export.set_defaults(func=_cmd_export)
    return [compare, record, listing, export]
