#!/usr/bin/env bash
# The package as a lab installs it: a wheel built from this checkout, installed into a fresh virtual
# environment outside it, its console script run from an empty folder (it must find its own search
# space and campaigns: package data, not the checkout's files).
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
start=$(date +%s)
python -m pip wheel -q --no-deps . -w "$work/dist"
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q --upgrade pip
"$work/venv/bin/python" -m pip install -q "$work"/dist/nba_scale-*.whl
mkdir "$work/empty" && cd "$work/empty"
"$work/venv/bin/nba-scale" campaign --list > "$work/campaigns.txt"
grep -q '^table2 ' "$work/campaigns.txt" || { echo "wheel check: the installed package lists no table2 campaign"; exit 1; }
"$work/venv/bin/nba-scale" tune --attack badnets --dataset synthetic --preset smoke --num-samples 2 \
    --clean-fraction 0.1 --device cpu --results "$work/empty/results" --name wheel --cache-dir "$work/cache" > "$work/tune.log" 2>&1 \
    || { tail -30 "$work/tune.log"; exit 1; }
# The rows as every reader counts them (a finished sweep compacts its one-row files: sweep/store.py)
rows=$("$work/venv/bin/python" -c "import sys; from nba_scale.sweep.store import read_table; print(read_table(sys.argv[1]).num_rows)" "$work/empty/results/wheel")
[ "$rows" -eq 2 ] || { echo "wheel check: expected 2 rows, found $rows"; tail -30 "$work/tune.log"; exit 1; }
echo "wheel check: built, installed outside the checkout, smoke sweep from an empty folder: $rows rows in $(( $(date +%s) - start ))s"
