"""`python -m tests.chaos [--minutes M] [--seed S] [--steps N] [--version V] [--world W]`: the command
line in cli.py."""

import sys

from tests.chaos.cli import main

if __name__ == "__main__":
    sys.exit(main())
