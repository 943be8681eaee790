"""Re-report recorded runs with one tree of bench and diff what two trees say: the check that a refactor of the
report, gate or site code changed no table, verdict or dashboard datum.

    python benchmarks/rereport_diff.py snapshot RUNS_DIR OUT [--tree TREE]
    python benchmarks/rereport_diff.py diff OUT_BEFORE OUT_AFTER

`snapshot` copies every run directory of RUNS_DIR into OUT/runs (the recorded runs are never written), then runs
the bench of TREE (default: this checkout; PYTHONPATH=TREE, as a user's `python -m bench`) on the copies:

- `report RUN --no-html`: each run's report.md;
- `compare RUN --json`: each run's within-run verdicts (variants against the reference, paired rounds);
- `compare A B --json`: the cross-run verdicts of every ordered pair of runs of the same suite;
- `export RUN --format csv`: every metric of every case;
- `site --no-cache`: the JSON data block of every page of the dashboard.

The outputs are normalised (the scratch path, the site's build time) and written under OUT/out. `diff` compares
two snapshots file by file, prints a unified diff of each difference and exits 1 if there is any, else 0.
"""
from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
SITE_DATA = re.compile(r'<script type="application/json" id="site-data">(.*?)</script>', re.DOTALL)


def _bench(tree: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(tree), "BENCH_HISTORY_DB": str(cwd / "no-history.sqlite")}
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          check=False, timeout=900)


def _suite(run_dir: Path) -> str:
    return json.loads((run_dir / "run.json").read_text()).get("suite_name") or ""


def snapshot(runs_dir: Path, out: Path, tree: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    runs = out / "runs"
    shutil.copytree(runs_dir, runs, symlinks=True)
    dest = out / "out"
    dest.mkdir()
    scratch = str(out.resolve())

    def keep(name: str, text: str) -> None:
        (dest / name).write_text(text.replace(scratch, "<OUT>"))

    names = sorted(p.name for p in runs.iterdir() if (p / "run.json").is_file())
    for name in names:
        proc = _bench(tree, out, "report", name, "--no-html", "--results-dir", "runs", "--reports-dir", "reports")
        keep(f"{name}.report-exit", f"{proc.returncode}\n{proc.stderr}")
        report = out / "reports" / name / "report.md"
        keep(f"{name}.report.md", report.read_text() if report.exists() else "(none)\n")
        proc = _bench(tree, out, "compare", name, "--results-dir", "runs", "--json", f"within-{name}.json")
        keep(f"{name}.within.exit", f"{proc.returncode}\n")
        keep(f"{name}.within.json", _read(out / f"within-{name}.json"))
        proc = _bench(tree, out, "export", name, "--results-dir", "runs", "--format", "csv")
        keep(f"{name}.export.csv", proc.stdout)
    for base in names:
        for cur in names:
            if base != cur and _suite(runs / base) == _suite(runs / cur):
                proc = _bench(tree, out, "compare", base, cur, "--results-dir", "runs", "--json", "pair.json")
                keep(f"{base}..{cur}.exit", f"{proc.returncode}\n")
                keep(f"{base}..{cur}.json", _read(out / "pair.json"))
                (out / "pair.json").unlink(missing_ok=True)
    proc = _bench(tree, out, "site", "--results", "runs", "--reports", "reports", "--no-cache", "-o", "site")
    keep("site.exit", f"{proc.returncode}\n{proc.stderr}")
    for page in sorted((out / "site").rglob("*.html")):
        if "reports" in page.relative_to(out / "site").parts:
            continue
        found = SITE_DATA.search(page.read_text())
        data = json.loads(found.group(1)) if found else None
        keep("site." + str(page.relative_to(out / "site")).replace("/", "."), json.dumps(data, indent=1,
                                                                                          sort_keys=True))
    print(f"snapshot of {len(names)} runs by {tree}: {dest}")


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else "(none)\n"


def diff(before: Path, after: Path) -> int:
    a, b = before / "out", after / "out"
    names = sorted({p.name for p in a.iterdir()} | {p.name for p in b.iterdir()})
    differing = 0
    for name in names:
        left = (a / name).read_text().splitlines() if (a / name).exists() else ["(missing)"]
        right = (b / name).read_text().splitlines() if (b / name).exists() else ["(missing)"]
        if left != right:
            differing += 1
            sys.stdout.writelines(line + "\n" for line in difflib.unified_diff(left, right, f"before/{name}",
                                                                                 f"after/{name}", lineterm=""))
    print(f"{len(names)} outputs compared, {differing} differ")
    return 1 if differing else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    snap = sub.add_parser("snapshot")
    snap.add_argument("runs", type=Path)
    snap.add_argument("out", type=Path)
    snap.add_argument("--tree", type=Path, default=HERE)
    cmp = sub.add_parser("diff")
    cmp.add_argument("before", type=Path)
    cmp.add_argument("after", type=Path)
    args = parser.parse_args()
    if args.command == "snapshot":
        snapshot(args.runs, args.out, args.tree.resolve())
        return 0
    return diff(args.before, args.after)


if __name__ == "__main__":
    sys.exit(main())
