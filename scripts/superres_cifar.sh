#!/usr/bin/env bash
# Super-resolution by spectral completion at CIFAR-10 scale (docs/superres.md): 10,000 generated 32 px images to
# 64 px by plain bicubic upsampling, by stride and by patch completion at each k of $KEEP, FID of each against the
# 50,000 CIFAR-10 training images bicubic-upsampled to 64 px (the reference, built once).
#   GEN=out/cifar10/gen/best.pt DATA=../shared/data/cifar10 OUT=out/superres bash scripts/superres_cifar.sh
# Writes $OUT/superres.json (PSNR to the input and FID per output), $OUT/side_by_side.png and the .npz files.
set -euo pipefail
GEN=${GEN:?set GEN to a generator checkpoint trained on CIFAR-10 by train_gen.py}
DATA=${DATA:-../shared/data/cifar10}
OUT=${OUT:-out/superres}
PER_CLASS=${PER_CLASS:-1000}                    # 10,000 generated images
KEEP=${KEEP:-8 16 24 28 32}                     # k tokens kept of N = 32, one output per k and split (32: the tokenizer alone)
SAMPLING=${SAMPLING:---cfg 2.0}                 # the best sweep setting of scripts/cifar10.sh's recipe (docs/results.md)
[ -n "${INCEPTION:-}" ] && WEIGHTS_FID=(--inception "$INCEPTION") || WEIGHTS_FID=()
STATS=$OUT/ref64_stats.npz  # of $OUT/ref64/superres_plain_<n>x64x64x3.npz, n = the training images
mkdir -p "$OUT"
[ -f "$STATS" ] || { python superres.py --ckpt "$GEN" --input "$DATA/train" --modes plain --out "$OUT/ref64" &&
  python fid.py --no-pr --save-stats "$STATS" "$OUT"/ref64/superres_plain_*x3.npz "${WEIGHTS_FID[@]}"; }
[ -f "$OUT/samples/samples_$((PER_CLASS * 10))x32x32x3.npz" ] || python sample.py --ckpt "$GEN" --classes all \
  --per_class "$PER_CLASS" --batch_size 1000 --seed 1 $SAMPLING --out "$OUT/samples"
# shellcheck disable=SC2086
python superres.py --ckpt "$GEN" --input "$OUT/samples/samples_$((PER_CLASS * 10))x32x32x3.npz" --keep $KEEP \
  $SAMPLING --batch_size 1000 --fid_ref "$STATS" "${WEIGHTS_FID[@]}" --out "$OUT"
