"""How long `python -m bench validate` takes on large suites (issue 28), measured by hand: prints figures.

Two suites are generated: 10,000 variants (one backend entry each, as a sweep written out in full: a 750 kB
file) and one whose lists multiply to 10**8 cases (refused by the case limit before anything is expanded).
Each is validated REPS times in a fresh interpreter, as a user runs it; printed per run: wall seconds, CPU
seconds (user + system, what a loaded machine inflates least) and the peak RSS of that process. Usage:

    python benchmarks/validate_scale.py [--reps 3] [--bench-root DIR]

`--bench-root` validates with another checkout's bench (e.g. the commit before a change) for a before/after.
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def suites(directory: Path) -> dict[str, Path]:
    entries = "".join(f"  - {{backend: hf-eager, label: v{i}, options: {{kv_residual_length: {i + 1}}}}}\n"
                      for i in range(10_000))
    tail = "workloads: [{batch_size: 1, prompt_tokens: 8, new_tokens: 4}]\ntasks: [latency]\n"
    axis = ", ".join(str(i) for i in range(1, 101))
    values = ", ".join(str(i) for i in range(1, 10_001))
    texts = {
        "10,000 variants": f"name: scale\nmodels: [tiny-llama]\nbackends:\n{entries}{tail}",
        "10**8 cases": (f"name: huge\nmodels: [tiny-llama]\nbackends:\n  - backend: hf-eager\n    options: "
                        f"{{kv_residual_length: [{values}]}}\nworkloads: [{{batch_size: [{axis}], prompt_tokens: "
                        f"[{axis}], new_tokens: 4}}]\ntasks: [latency]\n"),
    }
    paths = {}
    for name, text in texts.items():
        paths[name] = directory / f"{name.split()[0].replace(',', '').replace('*', '')}.yaml"
        paths[name].write_text(text)
    return paths


# `python -m bench validate SUITE`, reporting its own peak RSS (VmHWM-like ru_maxrss of that process) at exit
CHILD = ("import atexit, resource, runpy, sys\n"
         "atexit.register(lambda: print(f'peak_rss_kib {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}', "
         "file=sys.stderr))\n"
         "sys.argv = ['bench', 'validate', sys.argv[1]]\n"
         "runpy.run_module('bench', run_name='__main__')\n")


def validate(bench_root: Path, suite: Path, cwd: Path, timeout: float) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-c", CHILD, str(suite)], cwd=cwd, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(bench_root)}, check=False, timeout=timeout)
    except subprocess.TimeoutExpired:  # killed; its CPU time is not counted by RUSAGE_CHILDREN
        return {"exit": None, "wall_s": time.perf_counter() - started, "cpu_s": float("nan"),
                "peak_rss_mib": float("nan"), "said": f"killed after {timeout:g} s"}
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak = next((int(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("peak_rss_kib ")), 0)
    said = [line for line in (proc.stdout + proc.stderr).splitlines() if line and not line.startswith("peak_rss_kib")]
    return {"exit": proc.returncode, "wall_s": wall,
            "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            "peak_rss_mib": peak / 1024, "said": said[-1][:110] if said else ""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--bench-root", type=Path, default=ROOT)
    parser.add_argument("--timeout", type=float, default=120, help="seconds per validate (default 120); a bench "
                        "without the case limit spends minutes and GiBs on the 10**8-case suite")
    parser.add_argument("--only", help="only the suite whose name starts so ('10,000' or '10**8')")
    args = parser.parse_args()
    print(f"bench from {args.bench_root}; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in suites(Path(tmp)).items():
            if args.only and not name.startswith(args.only):
                continue
            for rep in range(args.reps):
                r = validate(args.bench_root, path, Path(tmp), args.timeout)
                print(f"{name:16} rep {rep + 1}: exit {r['exit']}, wall {r['wall_s']:.2f} s, CPU {r['cpu_s']:.2f} s, "
                      f"peak RSS {r['peak_rss_mib']:.0f} MiB | {r['said']}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
