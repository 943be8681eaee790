"""`report` and `export`: reading finished runs (any format) into reports and other tools' formats."""
from __future__ import annotations

import sys
from pathlib import Path

from bench.errors import BadInput, ExitCode


def write_reports(args, runs) -> None:
    """The Markdown report of each run, then one HTML report of them all (side by side when several)."""
    from bench.records import outputs
    from bench.report import html, markdown

    for run in runs:
        outputs.check_reports(args.reports_dir, run.run_id)
    try:
        for run in runs:
            print(f"report: {markdown.write_report(run, args.reports_dir)}")
        if getattr(args, "no_html", False):
            return
        from bench.gate import history

        try:
            path = html.write_html(runs, args.reports_dir, history.db_path(getattr(args, "history_db", None),
                                                                            args.results_dir))
        except html.MissingReportExtra as exc:
            print(f"html report not written: {exc}", file=sys.stderr)
            return
    except OSError as exc:
        raise BadInput(f"cannot write the report under {args.reports_dir}: {exc.strerror or exc}") from None
    print(f"html report: {path}")


def cmd_report(args) -> ExitCode:
    from bench.records.rundir import load_run

    write_reports(args, [load_run(spec, args.results_dir) for spec in args.run_ids])
    return ExitCode.OK


def cmd_export(args) -> ExitCode:
    from bench.records import outputs
    from bench.records.rundir import load_run
    from bench.report.export import SIGNATURES, export, render

    places = {"signature": SIGNATURES[args.format], "force": args.force, "results": args.results_dir,
              "reports": args.reports_dir}
    if args.output is not None:  # refused before the run is read: never into a run, never over another's file
        outputs.check_file(args.output, "-o", **places)
    run = load_run(args.run, args.results_dir)
    try:
        if args.output is None:
            print(export(run, args.format))
        else:
            print(outputs.write(args.output, render(run, args.format)[0], "-o", **places))
    except OSError as exc:
        raise BadInput(f"cannot write the export: {exc.strerror or exc}") from None
    return ExitCode.OK


def add_force_argument(parser) -> None:
    parser.add_argument("--force", action="store_true", help="replace an existing output file that is not this "
                        "command's own earlier output (never a run's file: those are always refused)")


def add_commands(sub) -> list:
    report = sub.add_parser("report", help="write the Markdown report of finished runs, and one HTML report")
    report.add_argument("run_ids", nargs="+", metavar="RUN", help="run ids or run directories")
    report.add_argument("--no-html", action="store_true", help="write only the Markdown report(s)")
    report.add_argument("--history-db", type=Path, help="plot trends from this history database "
                        "(default: $BENCH_HISTORY_DB or <results-dir>/history.sqlite, when it exists)")
    report.set_defaults(func=cmd_report)

    export = sub.add_parser("export", help="export a run as pytest-benchmark JSON or CSV")
    export.add_argument("run", metavar="RUN", help="run id or run directory")
    export.add_argument("--format", required=True, choices=["pytest-benchmark", "csv"])
    export.add_argument("-o", "--output", type=Path, help="output file (default: <run dir>/export-<format>.json|csv); "
                        "never inside a run, and an existing file only if it is an earlier export (or with --force)")
    add_force_argument(export)
    export.set_defaults(func=cmd_export)
    return [report, export]
