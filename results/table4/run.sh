#!/usr/bin/env bash
# run.sh [row ...] | run.sh cifar10 [stage ...] | run.sh superres [stage ...]: on the device, the Table 4 rows one
# after another at the campaign's budget (table4.sh's defaults), or scripts/cifar10.sh's stages (full SpectralAR at
# its own budget, into $ROOT/cifar10), or scripts/superres_cifar.sh's (into $ROOT/superres16), their settings from
# the environment launch.sh was given, then /root/stage/DONE. launch.sh starts it detached with its own arguments;
# a finished row (its gFID written) is skipped, and wait.sh collects every row's logs and JSON as they stand. (The
# run of titok_s1 and causal also profiled the CIFAR-10 tokenizer's step after DONE: this file at commit 579ebb2,
# docs/performance.md.)
set -u
export PYTHONUNBUFFERED=1  # the device image has `python` on PATH (its venv)
cd /root/stage/repo
export DATA=/root/stage/data INCEPTION=/root/stage/w/default_1.pt LPIPS=/root/stage/w/vgg16.ckpt ROOT=/root/stage/t4
mkdir -p "$ROOT"
date; echo "arguments: ${*:-all rows}"
if [ "${1:-}" = cifar10 ]; then
  shift; OUT=$ROOT/cifar10 bash scripts/cifar10.sh "$@" > "$ROOT/cifar10.log" 2>&1; echo "cifar10 exit $?"
elif [ "${1:-}" = superres ]; then
  shift; OUT=$ROOT/superres16 bash scripts/superres_cifar.sh "$@" > "$ROOT/superres.log" 2>&1; echo "superres exit $?"
else
  bash scripts/table4.sh "$@" > "$ROOT/summary.txt" 2>&1; echo "table4 exit $?"
fi
date; touch /root/stage/DONE
