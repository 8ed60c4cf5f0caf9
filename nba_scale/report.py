"""`python -m nba_scale.report`: the command lives in nba_scale/sweep/report.py (this keeps it short)."""
import sys

from .sweep.report import main

if __name__ == "__main__":
    sys.exit(main())
