#!/usr/bin/env bash
# one call: Table 4's titok / causal / full rows on the GPU at a smoke budget (no LPIPS, no FID weights carried):
# tokenizer 600 steps, generator 400 steps, validation NLL per position and prefix PSNR
set -u
mkdir -p /root/d && tar -xzf .stage/cifar10.tgz -C /root/d
export PYTHONUNBUFFERED=1
for row in titok causal full; do
  (python3 train_tok.py --preset cifar --ablation $row --data /root/d/train --out_dir /root/o/$row/tok --batch_size 256 \
     --max_steps 600 --lr 3e-4 --min_lr 3e-5 --warmup 100 --disc_start 360 --restart_every 200 --log_every 100 \
     --sample_every 600 --ckpt_every 600 --workers 4 --lpips_weight 0 --codebook_size 4096 --full_prefix_prob 0.5 \
     --gan_full_only --compile --eval_data /root/d/test --eval_prefix_images 2000 &&
   python3 train_gen.py --preset cifar_d8 --tok_ckpt /root/o/$row/tok/ckpt.pt --data /root/d/train --val_data /root/d/test \
     --augment 2 --ema 0.9995 --out_dir /root/o/$row/gen --batch_size 512 --max_steps 400 --lr 2e-4 --log_every 100 \
     --eval_every 200 --ckpt_every 400 --sample_every 400 --workers 4) > $OUT/$row.log 2>&1 &
done
wait
python3 plot.py /root/o/titok/gen/log.jsonl /root/o/causal/gen/log.jsonl /root/o/full/gen/log.jsonl --per_position \
  --out $OUT/nll_per_position.png --title 'validation NLL per position (smoke budget)'
(cd /root/o && tar -czf $OUT/logs.tgz */tok/eval.jsonl */tok/log.jsonl */tok/prefixes_*.png */gen/log.jsonl */gen/*.png)
for row in titok causal full; do
  echo "== $row"; grep -h "PSNR at N" $OUT/$row.log; grep -h "NLL per sequence" $OUT/$row.log | tail -2
done
