"""Command-line interface: `python -m bench COMMAND`. Parsing and dispatch only; each family of
commands is one module (`run`, `report`, `gate`, `tools`, `site`, `bisect`) whose handlers import their work lazily,
so `python -m bench --help` stays fast.

Every handler returns an `ExitCode` (bench/errors.py) or raises `BadInput`, which is printed as one
`error: ...` line with exit code 2. Anything else is a bug in bench: its traceback is printed and
the exit code is INTERNAL_ERROR (70), never a code that means a verdict.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

from bench.errors import BadInput, ExitCode


def build_parser() -> argparse.ArgumentParser:
    from bench.cli import bisect, gate, report, run, site, tools

    parser = argparse.ArgumentParser(prog="python -m bench", description="bench: an LLM inference benchmark and "
                                     "profiling harness (latency, throughput, memory, quality).")
    sub = parser.add_subparsers(dest="command", required=True)
    with_dirs = run.add_commands(sub) + report.add_commands(sub) + gate.add_commands(sub)
    tools.add_commands(sub)
    site.add_commands(sub)
    bisect.add_commands(sub)
    for p in with_dirs:
        p.add_argument("--results-dir", type=Path, default=Path("results"), help="default: ./results")
        p.add_argument("--reports-dir", type=Path, default=Path("reports"), help="default: ./reports")
    return parser


def main(argv: list[str] | None = None, exiting: bool = False) -> int:
    """Run the command `argv` names; `exiting`: the process exits right after (`python -m bench`)."""
    try:
        args = build_parser().parse_args(argv)
        args.exiting = exiting
        return int(args.func(args))
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    except KeyboardInterrupt:
        return interrupted()
    except BrokenPipeError:  # the reader went away (`| head`): nothing more to say, not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.OK
    except Exception:  # noqa: BLE001 - a bug: say so, and never exit with a verdict's code
        traceback.print_exc()
        print("error: internal error in bench (the traceback above); please report it", file=sys.stderr)
        return ExitCode.INTERNAL_ERROR


def interrupted() -> int:
    """Ctrl-C outside a command's own handling: exit code 130, no traceback."""
    from bench.core.process import forget_unhandled_interrupt

    forget_unhandled_interrupt()  # the exit code stays 130 (see bench/core/process.py)
    print("\ninterrupted", file=sys.stderr)
    return ExitCode.INTERRUPTED
