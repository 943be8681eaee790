"""`python -m bench`: the command-line entry point."""
import sys

from bench.cli import main

sys.exit(main())
