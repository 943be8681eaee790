"""What the Ray executor costs, and whether it changes what is measured: `python benchmarks/ray_overhead.py OUT_DIR`.

1. Overhead: a known-answer suite of K single-case units (K = 2 and 8), run by the local executor and by the
   Ray executor on a running 1-node local cluster with 1 CPU (units one at a time, as locally), alternating,
   `--repeat` times. The wall time of `python -m bench run` is measured around the whole command; the Ray
   path's extra time per unit is the difference of the slopes over K, its fixed cost (connect, one
   preparation task) the difference of the intercepts.
2. The smoke suite (suites/smoke.yaml, tiny-llama) on a 2-node local cluster (1 CPU each, so two units run
   at once on this machine's 2 cores) and locally, one after the other; per case: status, TTFT, TPOT,
   decode tok/s, perplexity, side by side.

Everything binds to 127.0.0.1. Prints a JSON summary and writes the runs under OUT_DIR.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
KNOWN_ANSWER = "tests.known_answer_backend:KnownAnswerBackend"


def _bench(cwd: Path, *args: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "bench", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          check=False, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"bench {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return time.monotonic() - started


def _units_suite(out: Path, units: int) -> Path:
    (out / "eval.txt").write_text("the evaluation text of the known-answer backend " * 4)
    path = out / f"units{units}.yaml"
    path.write_text(textwrap.dedent(f"""
        name: units{units}
        models: [synthetic]
        backends: [{{backend: "{KNOWN_ANSWER}", options: {{token_delay_s: 0.001}}}}]
        workloads: [{{batch_size: {list(range(1, units + 1))}, prompt_tokens: 8, new_tokens: 4}}]
        tasks: [latency]
        repetitions: {{warmup: 0, min: 2, max: 2, processes: 1}}
        perplexity: {{text: eval.txt}}
        """))
    return path


def _fit(points: dict[int, float]) -> tuple[float, float]:
    """(seconds per unit, fixed seconds) of a line through the medians at two unit counts."""
    (k1, t1), (k2, t2) = sorted(points.items())
    slope = (t2 - t1) / (k2 - k1)
    return slope, t1 - slope * k1


def overhead(out: Path, repeat: int) -> dict:
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": LOOPBACK,
                                                            "include_dashboard": False})
    walls: dict[str, dict[int, list[float]]] = {"local": {}, "ray": {}}
    try:
        for i in range(repeat):
            for units in (2, 8):
                suite = _units_suite(out, units)
                walls["local"].setdefault(units, []).append(_bench(out, "run", suite.name, "--run-id",
                                                                   f"local-{units}-{i}"))
                walls["ray"].setdefault(units, []).append(_bench(out, "run", suite.name, "--run-id", f"ray-{units}-{i}",
                                                                 "--executor", "ray", "--address", cluster.address))
    finally:
        cluster.shutdown()
    medians = {name: {k: statistics.median(v) for k, v in by_units.items()} for name, by_units in walls.items()}
    (local_slope, local_fixed), (ray_slope, ray_fixed) = _fit(medians["local"]), _fit(medians["ray"])
    return {"walls_s": walls, "median_walls_s": medians, "local_s_per_unit": local_slope, "ray_s_per_unit": ray_slope,
            "ray_overhead_s_per_unit": ray_slope - local_slope, "ray_fixed_overhead_s": ray_fixed - local_fixed}


def _metrics(out: Path, run_id: str) -> dict[str, dict]:
    sys.path.insert(0, str(ROOT))
    from bench.records import load_run

    shown = ("ttft_ms", "tpot_ms", "decode_tok_s", "perplexity")
    return {r.id: {"status": r.status, **{m: r.value(m) for m in shown if r.value(m) is not None},
                   "node": r.machine.node[:8] if r.machine and r.machine.node else None}
            for r in load_run(out / "results" / run_id).records}


def smoke(out: Path) -> dict:
    from ray.cluster_utils import Cluster

    suite = str(ROOT / "suites" / "smoke.yaml")
    walls = {"local": _bench(out, "run", suite, "--run-id", "smoke-local")}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": LOOPBACK,
                                                            "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1, node_ip_address=LOOPBACK)
        cluster.wait_for_nodes()
        walls["ray"] = _bench(out, "run", suite, "--run-id", "smoke-ray", "--executor", "ray", "--address",
                              cluster.address)
    finally:
        cluster.shutdown()
    local, ray = _metrics(out, "smoke-local"), _metrics(out, "smoke-ray")
    return {"walls_s": walls, "same_cases": sorted(local) == sorted(ray),
            "cases": {case: {"local": local[case], "ray": ray.get(case)} for case in local}}


def main(argv: list[str]) -> int:
    out = Path(argv[0] if argv else "ray-overhead").resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a throwaway local cluster
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep ray on loopback
    summary = {"overhead": overhead(out, repeat=int(os.environ.get("REPEAT", "3"))), "smoke": smoke(out)}
    print(json.dumps(summary, indent=1))
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
