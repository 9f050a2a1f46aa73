#!/usr/bin/env bash
# fid.py's recorded evidence on a GPU: CIFAR-10 train reference statistics, FID(test 10k, train 50k) in
# both resize modes, and feature-extraction speed with TF32 off and on.
#   INCEPTION=/path/default_1.pt DATA=../shared/data OUT=out/fid_evidence bash scripts/fid_evidence.sh
set -euo pipefail
: "${INCEPTION:?set INCEPTION to default_1.pt or pt_inception-2015-12-05-6726825d.pth}"
DATA=${DATA:-../shared/data}; OUT=${OUT:-out/fid_evidence}; DEVICE=${DEVICE:-cuda}
STATS=${STATS:-$OUT/cifar10_train_stats.npz}
mkdir -p "$OUT" "$(dirname "$STATS")"; export PYTHONUNBUFFERED=1
fid() { python fid.py --inception "$INCEPTION" --device "$DEVICE" --batch "${BATCH:-500}" --workers 8 "$@"; }
{
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true
  python -c 'import torch, scipy; print("torch", torch.__version__, "cuda", torch.version.cuda, "scipy", scipy.__version__)'
  sha256sum "$INCEPTION"
  echo "== 1. CIFAR-10 train reference statistics, tf1 resize (mu, sigma, mu_s, sigma_s; no pool features)"
  fid --no-pr --save-stats "$STATS" "$DATA/cifar10/train"
  sha256sum "$STATS"
  echo "== 2. test 10k vs the train statistics, tf1 resize (ADM): FID, sFID"
  fid "$DATA/cifar10/test" "$STATS" --no-pr
  echo "== 3. test vs train images, tf1 resize: FID, sFID, precision, recall"
  fid "$DATA/cifar10/test" "$DATA/cifar10/train" --json "$OUT/fid_tf1.json"
  echo "== 4. test vs train images, pytorch-fid resize"
  fid --resize pytorch "$DATA/cifar10/test" "$DATA/cifar10/train" --no-pr --json "$OUT/fid_pytorch.json"
  echo "== 5. images/s on the 50,000 train images, TF32 off (default), then on"
  fid --bench "$DATA/cifar10/train"
  fid --bench --tf32 "$DATA/cifar10/train"
} 2>&1 | tee "$OUT/fid_evidence.log"
