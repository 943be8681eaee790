"""`site`: the static performance dashboard (bench/site, docs/dashboard.md) from results/ and the run history."""
from __future__ import annotations

from pathlib import Path

from bench.errors import BadInput, ExitCode


def cmd_site(args) -> ExitCode:
    from bench.gate import history
    from bench.records import outputs
    from bench.site.build import build
    from bench.site.store import default_dir

    if args.max_pairs < 0:
        raise BadInput(f"--max-pairs must be 0 or more, not {args.max_pairs}")
    outputs.check_directory(args.output, "-o", force=args.force, results=args.results, reports=args.reports)
    db = args.history
    if db is None:  # the history the gate uses, when there is one
        default = history.db_path(None, args.results)
        db = default if default.exists() else None
    cache = None if args.no_cache else args.cache or default_dir()
    done = build(args.results, db, args.output, args.reports, args.max_pairs, cache)
    print(f"site: {done['out']}/index.html: {len(done['pages'])} pages, {done['runs']} runs ({done['loaded_runs']} "
          f"loaded, {done['reports']} reports), {done['compared_pairs']} pairs compared ({done['cached_pairs']} from "
          f"the cache{f' {cache}' if cache else ': none'}, {done['cached_runs']} runs not parsed again), "
          f"{done['change_points']} change point(s), "
          f"{done['seconds']:.1f} s")
    return ExitCode.OK


def add_commands(sub) -> list:
    site = sub.add_parser("site", help="build the static performance dashboard (trends, change points, compare, "
                          "quantization, serving) from results/ and the run history")
    site.add_argument("--results", type=Path, default=Path("results"), help="runs to show (default: ./results)")
    site.add_argument("--history", type=Path, help="history database (default: $BENCH_HISTORY_DB or "
                      "<results>/history.sqlite, when it exists); never written")
    site.add_argument("--reports", type=Path, default=Path("reports"), help="where `bench report` wrote the runs' "
                      "HTML reports, copied into the site and linked from each trend point (default: ./reports)")
    site.add_argument("--max-pairs", type=int, default=12, help="per suite, gate verdicts for the newest N pairs of "
                      "consecutive runs (default: 12)")
    site.add_argument("--cache", type=Path, help="the dashboard's cache: each pair's verdicts and each run's summary, "
                      "kept between builds (default: $BENCH_CACHE/site, i.e. ~/.cache/bench/site)")
    site.add_argument("--no-cache", action="store_true", help="compute every pair's verdicts and read every run; "
                      "keep nothing")
    site.add_argument("-o", "--output", type=Path, default=Path("site"), help="output directory (default: ./site): "
                      "new, empty, or one bench built before; never inside a run or the results/reports directories")
    site.add_argument("--force", action="store_true", help="write into a non-empty directory bench did not build "
                      "(its files of the same names are replaced)")
    site.set_defaults(func=cmd_site)
    return []
