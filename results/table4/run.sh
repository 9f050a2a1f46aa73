#!/usr/bin/env bash
# run.sh [row ...]: the Table 4 rows on the device, one after another at the campaign's budget (table4.sh's
# defaults), then /root/stage/DONE. launch.sh starts it detached with its own arguments; a finished row (its gFID
# written) is skipped, and wait.sh collects every row's logs and JSON as they stand. (The run of titok_s1 and
# causal also profiled the CIFAR-10 tokenizer's step after DONE: this file at commit 579ebb2, docs/performance.md.)
set -u
export PYTHONUNBUFFERED=1  # the device image has `python` on PATH (its venv)
cd /root/stage/repo
export DATA=/root/stage/data INCEPTION=/root/stage/w/default_1.pt LPIPS=/root/stage/w/vgg16.ckpt ROOT=/root/stage/t4
mkdir -p "$ROOT"
date; echo "rows: ${*:-all}"
bash scripts/table4.sh "$@" > "$ROOT/summary.txt" 2>&1; echo "table4 exit $?"
date; touch /root/stage/DONE
