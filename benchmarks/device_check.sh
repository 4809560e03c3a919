#!/usr/bin/env bash
# Issue 14 item 5: the ONE prepared device check (<= 8 minutes; each section capped by `timeout`).
#
# Before the call, here (CPU):
#   echo /.devcarry/ >> .git/info/exclude; mkdir -p .devcarry
#   copydistill data make-benchmark --size small --seed 1 --out .devcarry/bench       # ~36 MiB real photos
#   python benchmarks/device_check.py prepare --bench .devcarry/bench                  # int8 teacher keys (kd_target: clean)
#   wheels the device lacks (kornia, kornia_rs, omegaconf, antlr4-python3-runtime, lightning, ...) into .whl
#   (device README's pip download line); total carried tree <= 64 MiB.
# The call:  run(command="bash benchmarks/device_check.sh", carry=[".devcarry", ".whl"], timeout_s=540)
# Here, to check it:  bash benchmarks/device_check.sh --dry-run   (CPU, tiny, < 2 minutes)
set -uo pipefail
DRY=${1:-}
OUT=${OUT:-/tmp/device-check-out}; mkdir -p "$OUT"
PY=${PYTHON:-python3}
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:${PYTHONPATH:-} || exit 1
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
LOG=$OUT/device_check.log
exec > >(tee -a "$LOG") 2>&1
echo "== device_check $(date -Is) dry=${DRY:-no}"; nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"
BENCH=${BENCH:-.devcarry/bench}
if [ "$DRY" = "--dry-run" ]; then
  BENCH=/tmp/device-check-bench
  [ -f $BENCH/teacher-keys.npy ] || { $PY -m copydistill.cli data make-benchmark --size tiny --seed 0 --source procedural --out $BENCH \
    && $PY benchmarks/device_check.py prepare --bench $BENCH; }
  COMMON="--dry-run --batch 8 --size 64 --bank 256 --workers 0"
  timeout 60 $PY benchmarks/device_check.py kd $COMMON --seconds 4 --warmup 1 --max-steps 3 --students resnet18 || echo "kd: rc $?"
  timeout 30 $PY benchmarks/device_check.py embed $COMMON --resize short:64 --students resnet18 || echo "embed: rc $?"
  timeout 60 $PY benchmarks/device_check.py train $COMMON --bench $BENCH --steps 3 --run-dir /tmp/device-check-run-$$ || echo "train: rc $?"
else
  # 2 students x 2 rows x 30 s + startup ~ 150 s; embed ~ 40 s; train 5 min + eval
  timeout 150 $PY benchmarks/device_check.py kd --seconds 25 --warmup 10 || echo "kd: rc $?"
  timeout 50 $PY benchmarks/device_check.py embed --workers 16 || echo "embed: rc $?"
  timeout 270 $PY benchmarks/device_check.py train --bench "$BENCH" --batch 256 --workers 16 --steps ${TRAIN_STEPS:-3000} || echo "train: rc $?"
fi
echo "== done $(date -Is)"; ls -la "$OUT"
