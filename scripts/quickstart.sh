#!/usr/bin/env bash
# The whole pipeline on a CPU in a few minutes, on the 500 CIFAR-10 test images bundled in assets/:
# tiny tokenizer -> token file -> tiny generator -> samples, coarse-to-fine strips and a PNG grid.
# It shows every stage working; the tiny models are far too small for good images (and too small for
# the GAN loss, which is off here).
set -euo pipefail
DATA=${DATA:-assets/cifar10_sample}
OUT=${OUT:-out/quickstart}
python train_tok.py --preset tiny --data "$DATA" --out_dir "$OUT/tok" --batch_size 32 --max_steps 500 --lr 2e-3 --min_lr 1e-4 --warmup 50 \
    --gan_weight 0 --lpips_weight 0.1 --restart_every 50 --log_every 50 --sample_every 250
python train_gen.py --preset tiny --tok_ckpt "$OUT/tok/ckpt.pt" --data "$DATA" --out_dir "$OUT/gen" \
    --batch_size 64 --max_steps 300 --lr 1e-3 --log_every 50 --sample_every 0
python sample.py --ckpt "$OUT/gen/ckpt.pt" --classes all --per_class 8 --progressive 4 --out "$OUT/samples"
echo "look at $OUT/tok/prefixes_0000500.png, $OUT/samples/grid.png and $OUT/samples/progressive.png"
