"""`python -m nba_scale.results`: the command lives in nba_scale/sweep/results.py (this keeps it short)."""
import sys

from .sweep.results import main

if __name__ == "__main__":
    sys.exit(main())
