"""`bisect`: the first commit between a good and a bad one that makes a case slower (bench/bisect/).

Exit codes (bench/errors.py): 0 the first bad commit was found, or "no change found" (BAD is not slower than GOOD:
nothing to blame; result.json's `outcome` tells the two apart); 2 bad input (nothing measured); 3 a commit could
not measure the case (its suite or its run failed); 4 a step stayed inconclusive; 130 / 143 interrupted (the
finished steps are kept: --resume).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from bench.errors import BadInput, ExitCode


def cmd_bisect(args) -> ExitCode:
    from bench.bisect import search
    from bench.cli.run import check_writable, stoppable

    if args.resume is not None:
        given = [flag for flag, value in (("GOOD", args.good), ("BAD", args.bad), ("--suite", args.suite),
                                          ("--case", args.case), ("--id", args.id)) if value is not None]
        if given:
            raise BadInput(f"--resume continues with the arguments the bisect started with: leave out "
                           f"{', '.join(given)}")
        repo, bisect = search.resume(args.results_dir, args.resume)
    else:
        missing = [flag for flag, value in (("GOOD", args.good), ("BAD", args.bad), ("--suite", args.suite),
                                            ("--case", args.case)) if value is None]
        if missing:
            raise BadInput(f"bisect needs {', '.join(missing)} (or --resume ID)")
        check_writable(args.results_dir, "--results-dir")
        repo, bisect = search.start(args.results_dir, args.suite, args.good, args.bad, args.case, args.metric,
                                    args.threshold, args.rounds, args.extra_rounds, args.repetitions, args.seed,
                                    args.id)
    with bisect.locked():
        return stoppable(args, lambda: search.search(repo, bisect),
                         lambda terminated: ExitCode.TERMINATED if terminated else ExitCode.INTERRUPTED)


def _count(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, not {value}")
        return value
    return parse


def add_commands(sub) -> None:
    from bench.cli.gate import _fraction

    bisect = sub.add_parser("bisect", help="find the first commit between GOOD and BAD that makes a latency case "
                            "slower: A/B rounds of each step's commit against GOOD, judged by the gate's rule")
    bisect.add_argument("good", nargs="?", metavar="GOOD", help="a commit where the case is fast (any git revision)")
    bisect.add_argument("bad", nargs="?", metavar="BAD", help="a later commit where it is slow (GOOD is its ancestor)")
    bisect.add_argument("--suite", type=Path, help="the suite file, inside the git repository to bisect: each "
                        "commit runs its own version of it")
    bisect.add_argument("--case", help="the case id (python -m bench validate lists them); matched at each commit "
                        "by variant, model and workload")
    bisect.add_argument("--metric", default="tpot_ms", help="the timed metric to judge (default tpot_ms; also "
                        "ttft_ms, e2e_ms, itl_ms, prefill_tok_s, decode_tok_s)")
    bisect.add_argument("--threshold", type=_fraction("--threshold", 0, 10),
                        help="relative change that counts (default: the GOOD commit's suite, regression:, else 0.05)")
    bisect.add_argument("--rounds", type=_count(1), default=6, help="A/B rounds per step, each a fresh `bench run` "
                        "of both commits in a random order (default 6, the least for a 95 %% interval)")
    bisect.add_argument("--extra-rounds", type=_count(0), default=6, help="rounds added once to a step that is "
                        "inconclusive before it stops the bisect (default 6; 0: none)")
    bisect.add_argument("--repetitions", type=_count(1), default=5, help="measured repetitions in each run (the "
                        "suite's repetitions.min and max for the bisect, in one process; default 5)")
    bisect.add_argument("--seed", type=int, default=0, help="seed of the order of the sides in each round")
    bisect.add_argument("--id", help="name of the bisect (its directory: <results-dir>/bisect-<id>; default: the "
                        "UTC time)")
    bisect.add_argument("--resume", metavar="ID", help="continue an interrupted bisect; finished steps are kept")
    bisect.add_argument("--results-dir", type=Path, default=Path("results"), help="default: ./results")
    bisect.set_defaults(func=cmd_bisect)
