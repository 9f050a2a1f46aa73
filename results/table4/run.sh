#!/usr/bin/env bash
# run.sh [row ...]: the Table 4 rows on the device, one after another at the campaign's budget (table4.sh's
# defaults), then /root/stage/DONE, then a tokenizer benchmark and /root/stage/BENCH_DONE. launch.sh starts it
# detached with its own arguments; a finished row (its gFID written) is skipped, and wait.sh collects every row's
# logs and JSON as they stand.
set -u
export PYTHONUNBUFFERED=1  # the device image has `python` on PATH (its venv)
cd /root/stage/repo
export DATA=/root/stage/data INCEPTION=/root/stage/w/default_1.pt LPIPS=/root/stage/w/vgg16.ckpt ROOT=/root/stage/t4
mkdir -p "$ROOT"
date; echo "rows: ${*:-all}"
bash scripts/table4.sh "$@" > "$ROOT/summary.txt" 2>&1; echo "table4 exit $?"
date; touch /root/stage/DONE
# then, in the time left on the machine: the CIFAR-10 tokenizer step (cifar10.sh's LPIPS at 128 px) timed and
# profiled by kernel class, for where its 8.7% MFU goes (collected by wait.sh SECONDS BENCH_DONE)
python bench.py train_tok --preset cifar --batch 256 --lpips_resize 128 --compile --profile \
  --json "$ROOT/bench_train_tok_cifar.jsonl" > "$ROOT/bench_train_tok_cifar.log" 2>&1
date; touch /root/stage/BENCH_DONE
