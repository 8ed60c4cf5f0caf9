"""`python -m nba_scale.compare`: the command lives in nba_scale/sweep/compare.py (this keeps it short)."""
import sys

from .sweep.compare import main

if __name__ == "__main__":
    sys.exit(main())
