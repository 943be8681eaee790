"""`python -m bench`: the command-line entry point."""
import sys

try:
    from bench.cli import main
except KeyboardInterrupt:  # Ctrl-C while Python was still importing bench: nothing was started
    from bench.core.process import forget_unhandled_interrupt

    forget_unhandled_interrupt()  # the exit code stays 130 (see bench/core/process.py)
    print("\ninterrupted", file=sys.stderr)
    sys.exit(130)
sys.exit(main(exiting=True))
