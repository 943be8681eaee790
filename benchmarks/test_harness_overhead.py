"""Benchmark: what does bench's own measurement cost, on the path users run? (a ratio, measured in one run)

Each round runs, in a shuffled order, (a) `python -m bench run` on a one-case suite (hf-eager, tiny-llama,
1 thread, batch 1, prompt 64, 32 new tokens, fixed repetitions: worker process, memory sampler, clock,
everything) and (b) a standalone hand-written KV-cache loop in its own process (benchmarks/raw_decode_loop.py)
with the same model, prompt, thread count, warm-up and repetitions. The ratio of their decode tokens/s is
taken per round; the report is the median ratio over the rounds with its distribution-free 95 % CI.

    python -m pytest benchmarks --benchmark-enable -s          (target: median ratio >= 0.98)
"""
import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

from bench.measure.stats import median_ci
from bench.models import build_builtin

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = int(os.environ.get("BENCH_OVERHEAD_ROUNDS", "16"))
PROMPT_TOKENS, NEW_TOKENS, WARMUP, REPETITIONS = 64, 32, 3, 20
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
       "TOKENIZERS_PARALLELISM": "false"}


def bench_case(workdir: Path, round_index: int) -> float:
    """decode_tok_s of one `python -m bench run` of the one-case suite."""
    run_id = f"overhead-{round_index}"
    subprocess.run([sys.executable, "-m", "bench", "run", "suite.yaml", "--run-id", run_id], cwd=workdir, env=ENV,
                   check=True, capture_output=True)
    from bench.records import load_run

    (record,) = load_run(workdir / "results" / run_id).records
    assert record.ok and record.latency.repetitions == REPETITIONS, record.reason
    return record.value("decode_tok_s")


def raw_loop(model: str) -> float:
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "raw_decode_loop.py"), model,
                          str(PROMPT_TOKENS), str(NEW_TOKENS), str(WARMUP), str(REPETITIONS)],
                         env=ENV, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["decode_tok_s"]


def test_bench_decode_throughput_vs_a_hand_written_loop_through_the_cli(benchmark, tmp_path):
    model = str(build_builtin("tiny-llama"))
    (tmp_path / "suite.yaml").write_text(textwrap.dedent(f"""
        name: overhead
        models: ["{model}"]
        backends: [{{backend: hf-eager}}]
        workloads: [{{batch_size: 1, prompt_tokens: {PROMPT_TOKENS}, new_tokens: {NEW_TOKENS}}}]
        tasks: [latency]
        repetitions: {{warmup: {WARMUP}, min: {REPETITIONS}, max: {REPETITIONS}, max_time_s: 600}}
        threads: 1
        """))
    rng = random.Random(0)
    ratios, pairs = [], []

    def one_round():
        order = ["bench", "raw"]
        rng.shuffle(order)
        measured = {}
        for which in order:
            measured[which] = bench_case(tmp_path, len(ratios)) if which == "bench" else raw_loop(model)
        ratios.append(measured["bench"] / measured["raw"])
        pairs.append(measured)

    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1)
    ordered = sorted(ratios)
    median = ordered[len(ordered) // 2] if len(ordered) % 2 else sum(ordered[len(ordered) // 2 - 1:][:2]) / 2
    ci = median_ci(ratios)
    benchmark.extra_info.update(ratio_median=median, ratio_ci95=ci, ratios=ratios, rounds=pairs, threads=1)
    print(f"\nbench run decode tok/s / hand-written loop decode tok/s, {len(ratios)} interleaved rounds, 1 thread: "
          f"median {median:.4f}, 95 % CI {ci[0]:.4f} to {ci[1]:.4f} (min {ordered[0]:.4f}, max {ordered[-1]:.4f})"
          if ci else f"\nmedian {median:.4f} over {len(ratios)} rounds (too few for a CI)")
    assert len(ratios) == ROUNDS and all(r > 0 for r in ratios)
