#!/usr/bin/env bash
# One prepared GPU check (device tool): data-parallel embedding on the GPU vs the single-process
# CPU path, on generated images. Prints throughput and the largest vector difference.
set -uo pipefail
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
OUT=${OUT:-/tmp/out}
nvidia-smi --query-gpu=name,memory.total --format=csv
python3 scripts/synthetic_images.py /tmp/emb_images --count 2000 --size 384x288 --prefix Q
for mode in cpu gpu; do
  start=$(date +%s.%N)
  if [ $mode = cpu ]; then
    python3 -m copydistill.cli embed --model resnet50:dims=512,seed=0 --resize short:288 --images /tmp/emb_images --out /tmp/emb_$mode 2>&1 | tr '\r' '\n' | grep -iE "error|wrote|embedd" | tail -3
  else
    python3 -m copydistill.cli embed --model resnet50:dims=512,seed=0 --resize short:288 --images /tmp/emb_images --out /tmp/emb_$mode --accelerator gpu --devices 1 2>&1 | tr '\r' '\n' | grep -iE "error|wrote|embedd" | tail -3
  fi
  end=$(date +%s.%N)
  python3 -c "print('$mode: 2000 images in %.1f s (%.0f img/s, incl. start-up)' % ($end - $start, 2000 / ($end - $start)))"
done
python3 - <<'PY'
import numpy as np
a, b = (np.load(f"/tmp/emb_{m}/embeddings.npz") for m in ("cpu", "gpu"))
assert list(a["ids"]) == list(b["ids"]), "id order differs"
d = np.abs(a["vectors"] - b["vectors"]).max()
cos = (a["vectors"] * b["vectors"]).sum(1)
print(f"same ids and order: True; max |cpu - gpu| = {d:.2e}; min cosine = {cos.min():.6f}")
PY
