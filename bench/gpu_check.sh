#!/usr/bin/env bash
# The first thing to run on a lent GPU machine: at most ~8 minutes on one H100, every figure as
# JSON under $OUT (default ./gpu_check_out). Each step has its own time limit and a failed step
# does not stop the others.
#
#   bash bench/gpu_check.sh                 # on the GPU machine, from the repository root
#
# Written for an image with `python3` (no `python`) and no Ray: the tests of step 2 import no Ray
# (nba_scale/sweep/resources.py; the one that needs it skips), and compare packs to float
# tolerance on CUDA, as the proofs do. Checked with Ray unimportable on the CPU (16 passed, 1
# skipped). What it needs beyond the GPU image (torch, accelerate, pyarrow, pillow): nothing for the core
# (its other imports come with accelerate); pytest for step 2, from `.wheels/` if the image lacks
# it (`pip download pytest -d .wheels` here, then carry `.wheels`); Ray and Optuna only for step 5,
# which is skipped without them. Real data: `.gpu_data/cifar10_10k.npz` if carried (make it with
# `python bench/subset_npz.py`), else synthetic images.
set -u
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
step() {  # step NAME LIMIT_S COMMAND...: stdout+stderr to $OUT/NAME.log, status to $OUT/steps.jsonl
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "{\"step\": \"$name\", \"rc\": $rc, \"s\": $((SECONDS - t0))}" | tee -a "$OUT/steps.jsonl"
}

# 1. The machine.
step env 60 python3 - <<'EOF'
import json, torch, platform
info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "memory_gib": [round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1)
                       for i in range(torch.cuda.device_count())]}
for mod in ("accelerate", "pyarrow", "safetensors", "yaml", "ray", "optuna", "pytest"):
    try:
        info[mod] = __import__(mod).__version__
    except Exception as e:
        info[mod] = f"missing ({type(e).__name__})"
print(json.dumps(info))
EOF
cp "$OUT/env.log" "$OUT/env.json"
python3 -c "import pytest" 2>/dev/null || { [ -d .wheels ] && python3 -m pip install -q --no-index --find-links .wheels pytest >"$OUT/pip.log" 2>&1; }

# 2. The tests that build trials, on the GPU (Ray-driven sweeps are skipped without Ray).
step tests 150 python3 -m pytest -q -x --device cuda tests/test_pack.py::test_a_member_of_a_pack_ends_exactly_as_it_would_alone \
    tests/test_pack.py::test_a_member_that_diverges_fails_alone tests/test_devices.py tests/test_end_to_end.py \
    -p no:cacheprovider --junitxml="$OUT/tests.xml"

# 3. The GPU paths the CPU cannot exercise (defaults, reused processes, resume, precision, packs).
step proofs 120 python3 bench/gpu_proofs.py
grep '^{' "$OUT/proofs.log" >"$OUT/proofs.jsonl"

# 4. Hot loops against the NAD-style reference loop, and packed trials without Ray.
step trial 90 python3 bench/trial.py --device cuda --images 8192 --epochs 3 --repeats 1 --only backdoor nad nba nba-pgd-bf16 --json "$OUT/trial.json"
step precision 60 python3 bench/precision.py --device cuda --batch 128 --json "$OUT/precision.json"
DATA=synthetic; SETS=(--set data.synthetic_train=20000 --set data.synthetic_test=2000)
if [ -f .gpu_data/cifar10_10k.npz ]; then DATA=npz:.gpu_data/cifar10_10k.npz; SETS=(); fi
step pack 150 python3 bench/pack.py --dataset "$DATA" "${SETS[@]}" --device cuda --packs 1 8 32 --num-samples 32 \
    --json "$OUT/pack.json"

# 5. The sweep through Ray Tune: fractional trials (1, 1/4, 1/8 of the GPU) and packs of 1, 8, 32.
if python3 -c "import ray, optuna" 2>/dev/null; then
  for frac in 1 0.25 0.125; do
    step "sweep_gpu$frac" 60 python3 bench/sweep.py --dataset "$DATA" "${SETS[@]}" --train-subset 0 --test-subset 0 \
        --device cuda --gpus-per-trial "$frac" --slots "$(python3 -c "print(int(1 / $frac))")" --packs 1 \
        --asha-packs --num-samples 16 --results "$OUT/sweep_gpu$frac" --json "$OUT/sweep_gpu$frac.json"
  done
  step sweep_packs 90 python3 bench/sweep.py --dataset "$DATA" "${SETS[@]}" --train-subset 0 --test-subset 0 \
      --device cuda --gpus-per-trial 1 --slots 1 --packs 8 32 --asha-packs --num-samples 32 \
      --results "$OUT/sweep_packs" --json "$OUT/sweep_packs.json"
else
  echo '{"step": "sweep", "skipped": "ray or optuna missing on this machine"}' | tee -a "$OUT/steps.jsonl"
fi
rm -rf "$OUT"/sweep_*/*/  # the rows stay in the JSON figures; the folders would not come back anyway
echo "figures in $OUT"
