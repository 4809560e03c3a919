#!/usr/bin/env bash
# One prepared GPU check (device tool): throughput benchmark + a short real bf16 training run.
set -uo pipefail
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
OUT=${OUT:-/tmp/out}
nvidia-smi --query-gpu=name,memory.total --format=csv
python3 benchmarks/gpu_train_step.py --students resnet18 mobilenet_v3_large efficientnet_b0 --batch 256 --steps 10 --out $OUT/gpu_train_step.json 2>&1 | grep -v Warning
python3 scripts/synthetic_images.py /tmp/gpu_train --count 2048 --size 320x240 --prefix T
python3 - <<'PY'
import torch
from copydistill.models.teachers import SSCDResNet50
torch.manual_seed(0)
torch.save(SSCDResNet50().state_dict(), "/tmp/sscd_random.torchvision.pt")
PY
start=$(date +%s.%N)
python3 -m copydistill.cli train train_images=/tmp/gpu_train arch=resnet18 teacher=sscd-torchvision:/tmp/sscd_random.torchvision.pt \
  augmentations=STRONG_BLUR mixup=true batch_size=256 epochs=4 warmup_epochs=1 workers=14 precision=bf16-mixed \
  'export=[onnx]' out_dir=/tmp/gpu_run entropy_weight=10 log_every_n_steps=2 2>&1 | grep -v "Warning\|warn" | tr '\r' '\n' | grep -E "Epoch [0-9]+: 100%|finished|Error|error" | tail -8
end=$(date +%s.%N)
python3 - "$start" "$end" <<'PY'
import sys, csv, glob
start, end = map(float, sys.argv[1:])
rows = list(csv.DictReader(open(glob.glob("/tmp/gpu_run/logs/version_0/metrics.csv")[0])))
steps = max(int(r["step"]) for r in rows if r.get("step")) + 1
print(f"real training run: {steps} steps of 256 images (512 views), wall {end - start:.1f}s incl. startup/export")
PY
ls -la /tmp/gpu_run/final 2>/dev/null
cp /tmp/gpu_run/logs/version_0/metrics.csv $OUT/gpu_run_metrics.csv 2>/dev/null
