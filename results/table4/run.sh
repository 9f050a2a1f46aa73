#!/usr/bin/env bash
# Table 4 on one GPU in two waves at one budget (1,500 tokenizer / 1,000 generator steps, CFG swept over 1.5 2 3
# on 3,000 samples each): titok and full, then their second seeds, so that a machine lost in wave 2 keeps wave 1
set -u
export PYTHONUNBUFFERED=1  # the device image has `python` on PATH (its venv)
cd /root/stage/repo
export DATA=/root/stage/data INCEPTION=/root/stage/w/default_1.pt LPIPS=/root/stage/w/vgg16.ckpt ROOT=/root/stage/t4 \
  TOK_STEPS=1500 GEN_STEPS=1000 WORKERS=4 SWEEP_PER_CLASS=300
for wave in "titok full" "titok_s1 full_s1"; do
  date; echo "wave: $wave"
  bash scripts/table4.sh $wave; echo "table4 exit $?"
  touch "/root/stage/DONE_${wave// /_}"
done
bash scripts/table4.sh titok full titok_s1 full_s1  # every row finished: only the summary, table and plot of all four
date; touch /root/stage/DONE
