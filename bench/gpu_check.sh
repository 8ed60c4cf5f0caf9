#!/usr/bin/env bash
# The first thing to run on a lent GPU machine: at most 6 minutes of steps on one H100, every
# figure in three files under $OUT (default ./gpu_check_out): gpu_check.json (each step's exit
# status, seconds and figures), gpu_check.log (every step's output, in order) and tests.xml
# (JUnit). Each step has its own time limit; a failed step does not stop the others, and the
# benchmarks write their figures after each size, so a step cut short keeps what it measured.
#
#   bash bench/gpu_check.sh              # on the GPU machine, from the repository root
#   bash bench/gpu_check.sh --dry-run    # the same steps on the CPU at toy sizes (a few minutes)
#
# Written for the image the device machines have: `python3` (no `python`), torch, accelerate,
# pyarrow, safetensors, pytest, and no Ray and no Optuna (Ray cannot be carried there). Nothing
# here needs them: the tests of step 2 import no Ray (nba_scale/sweep/resources.py; the one test
# that needs Ray skips) and compare packs to the proofs' float tolerance on CUDA; the
# fractional-GPU figures come from N trial processes sharing the device (bench/shared_device.py), as
# `tune --gpus-per-trial 1/N` would run them under Ray. Real data: `.gpu_data/cifar10_10k.npz`
# if carried (make it with `python3 bench/subset_npz.py`), else synthetic images.
set -u
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
WORK=$(mktemp -d)  # each step's own JSON, merged into $OUT/gpu_check.json at the end
trap 'rm -rf "$WORK"' EXIT
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
LOG="$OUT/gpu_check.log"
: >"$LOG"
step() {  # step NAME LIMIT_S COMMAND...: output appended to the log, status to $WORK/steps.jsonl
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  echo "===== $name (limit ${limit}s): $*" >>"$LOG"
  timeout "$limit" "$@" >>"$LOG" 2>&1
  local rc=$?
  echo "{\"step\": \"$name\", \"rc\": $rc, \"s\": $((SECONDS - t0)), \"limit_s\": $limit}" | tee -a "$WORK/steps.jsonl"
}

if [ "$DRY" = 1 ]; then  # the same steps, on the CPU, at toy sizes: the script cannot rot unseen
  DEVICE=cpu; T=(20 150 30 30 20 40 40)
  TRIAL=(--images 256 --clean 128 --epochs 2 --repeats 1 --only backdoor nad nba); PRECISION=(--batch 8 --steps 1)
  DATA=synthetic; SETS=(--set data.synthetic_train=600 --set data.synthetic_test=200 --set backdoor.epochs=1
                        --set teacher.epochs=1 --set nba.optim.epochs=1 --preset smoke)
  PACKS=(--packs 1 2 --modes stacked loop --num-samples 2); PROCS=(--processes 1 2 --num-samples 2)
  TESTS=(tests/test_pack.py::test_a_member_that_diverges_fails_alone tests/test_devices.py)
else  # limits summing to 6 minutes
  DEVICE=cuda; T=(20 100 70 40 20 80 30)
  TRIAL=(--images 8192 --epochs 3 --repeats 1 --only backdoor nad nba nba-pgd-bf16); PRECISION=(--batch 128)
  DATA=synthetic; SETS=(--set data.synthetic_train=20000 --set data.synthetic_test=2000)
  if [ -f .gpu_data/cifar10_10k.npz ]; then DATA=npz:.gpu_data/cifar10_10k.npz; SETS=(); fi
  PACKS=(--packs 1 32 8 --modes stacked loop --num-samples 32); PROCS=(--processes 1 4 8 --num-samples 16)
  TESTS=(tests/test_pack.py::test_a_member_of_a_pack_ends_exactly_as_it_would_alone
         tests/test_pack.py::test_a_member_that_diverges_fails_alone tests/test_devices.py tests/test_end_to_end.py
         tests/test_stacked.py)
fi

# 1. The machine.
step env "${T[0]}" python3 - <<EOF
import json, torch, platform
info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "memory_gib": [round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1)
                       for i in range(torch.cuda.device_count())], "dry_run": bool($DRY)}
for mod in ("accelerate", "pyarrow", "safetensors", "yaml", "ray", "optuna", "pytest"):
    try:
        info[mod] = __import__(mod).__version__
    except Exception as e:
        info[mod] = f"missing ({type(e).__name__})"
open("$WORK/env.json", "w").write(json.dumps(info))
print(json.dumps(info))
EOF
python3 -c "import pytest" 2>/dev/null || { [ -d .wheels ] && python3 -m pip install -q --no-index --find-links .wheels pytest >>"$LOG" 2>&1; }

# 2. The tests that build trials, on the device.
step tests "${T[1]}" python3 -m pytest -q -x --device "$DEVICE" "${TESTS[@]}" -p no:cacheprovider --junitxml="$OUT/tests.xml"

# 3. The GPU paths the CPU cannot exercise (defaults, reused processes, resume, precision, packs);
#    a dry run checks that the proofs load and list themselves.
if [ "$DRY" = 1 ]; then
  step proofs "${T[2]}" python3 bench/gpu_proofs.py --list
else
  step proofs "${T[2]}" python3 bench/gpu_proofs.py --json "$WORK/proofs.json"
fi

# 4. Hot loops against the NAD-style reference loop; packed trials and concurrent trial processes
#    (the fractional GPU) without Ray.
step trial "${T[3]}" python3 bench/trial.py --device "$DEVICE" "${TRIAL[@]}" --json "$WORK/trial.json"
step precision "${T[4]}" python3 bench/precision.py --device "$DEVICE" "${PRECISION[@]}" --json "$WORK/precision.json"
step pack "${T[5]}" python3 bench/pack.py --dataset "$DATA" "${SETS[@]}" --device "$DEVICE" "${PACKS[@]}" --json "$WORK/pack.json"
step shared_device "${T[6]}" python3 bench/shared_device.py --dataset "$DATA" "${SETS[@]}" --device "$DEVICE" "${PROCS[@]}" \
    --json "$WORK/shared_device.json"

python3 - "$WORK" "$OUT/gpu_check.json" "$DRY" <<'EOF'
import json, pathlib, sys
work, out, dry = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3] == "1"
steps = [json.loads(line) for line in (work / "steps.jsonl").read_text().splitlines() if line.strip()]
figures = {}
for f in sorted(work.glob("*.json")):
    try:
        figures[f.stem] = json.loads(f.read_text())
    except ValueError as e:
        figures[f.stem] = {"unreadable": str(e)}
out.write_text(json.dumps({"steps": steps, "figures": figures}, indent=1))
print(f"{sum(s['rc'] == 0 for s in steps)}/{len(steps)} steps ok, {sum(s['s'] for s in steps)}s")
# A dry run (CI) fails when a step does: the script must not rot. On the GPU every figure comes back.
sys.exit(1 if dry and any(s["rc"] != 0 for s in steps) else 0)
EOF
rc=$?
echo "figures in $OUT: gpu_check.json, gpu_check.log, tests.xml"
exit $rc
