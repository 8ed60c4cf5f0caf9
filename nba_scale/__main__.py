"""`python -m nba_scale COMMAND ...`: the `nba-scale` console script (nba_scale/console.py)."""
import sys

from .console import main

sys.exit(main())
