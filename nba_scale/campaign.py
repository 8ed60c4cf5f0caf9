"""`python -m nba_scale.campaign`: the command lives in nba_scale/sweep/campaign.py (this keeps it short)."""
import sys

from .sweep.campaign import main

if __name__ == "__main__":
    sys.exit(main())
