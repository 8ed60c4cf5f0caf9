"""`python -m nba_scale.tune`: the command lives in nba_scale/sweep/tune.py (this keeps it short)."""
import sys

from .sweep.tune import main

if __name__ == "__main__":
    sys.exit(main())
