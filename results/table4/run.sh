#!/usr/bin/env bash
# run.sh [row ...] | run.sh SCRIPT [VAR=value ...] [arg ...] [+ SCRIPT ...] [// SCRIPT ...]: on the device, the Table 4
# rows one after another at the campaign's budget (table4.sh's defaults, into $ROOT/<row>), or scripts/SCRIPT.sh with
# its arguments, one after another, each into $ROOT/SCRIPT (its OUT and ROOT) with its console in $ROOT/SCRIPT.log,
# stopping at the first that fails; a chain after a // word runs at the same time, on the next GPU: the k-th chain on
# scripts/run_variants.sh's gpu_of k, so that on one GPU they share it (two tokenizers sharing an H200 go about a fifth
# faster than one after the other, on an H100 no faster, docs/results.md; samplers sharing one go slower). VAR=value
# words before a script's arguments set its environment alone (e.g. "GEN_FLAGS=--dropout 0.2", which the Table 4 rows
# before it must not see; OUT=DIR runs one script twice into two folders). SCRIPT: table4 (its rows under $ROOT, as
# without a SCRIPT), cifar10 (full SpectralAR at its own budget), superres (scripts/superres_cifar.sh, into
# $ROOT/superres16), tok_search, gen_search, sweep_search. Settings for every script come from the environment launch.sh
# was given (e.g. TOK=/root/stage/t4/cifar10/tok/ckpt.pt for gen_search); the searches' SELECT, the selection split,
# defaults to /root/stage/select. Then /root/stage/DONE. launch.sh starts it detached with its own arguments; a finished
# row (its gFID written) is skipped, and wait.sh collects every log and JSON as they stand. (The run of titok_s1 and
# causal also profiled the CIFAR-10 tokenizer's step after DONE: this file at commit 579ebb2, docs/performance.md.)
set -u
STAGE=${STAGE:-/root/stage}  # the device's staging folder; another one rehearses the flow on a CPU (rehearse.sh)
export PYTHONUNBUFFERED=1  # the device image has `python` on PATH (its venv)
cd "$STAGE/repo"
export DATA=$STAGE/data INCEPTION=$STAGE/w/default_1.pt LPIPS=$STAGE/w/vgg16.ckpt ROOT=$STAGE/t4
mkdir -p "$ROOT"
date; echo "arguments: ${*:-all rows}"

run_script() {  # run_script NAME [VAR=value ...] [arg ...]: scripts/NAME.sh into $ROOT/NAME, console in $ROOT/NAME.log
  local name=$1 script=scripts/$1.sh dir=$ROOT/$1 settings=(); shift
  while [[ ${1:-} =~ ^[A-Z_][A-Z0-9_]*= ]]; do settings+=("$1"); shift; done  # this script's environment only
  [ "$name" = superres ] && script=scripts/superres_cifar.sh dir=$ROOT/superres16
  [ "$name" = table4 ] && dir=$ROOT  # its rows under $ROOT/<row>, as without a SCRIPT
  local log=$ROOT/$name.log setting
  for setting in "${settings[@]}"; do  # OUT=DIR: the script writes there, its console in $ROOT/<DIR's name>.log
    [[ $setting == OUT=* ]] && log=$ROOT/$(basename "${setting#OUT=}").log
  done
  # the searches' selection split outside t4, which wait.sh sends back; cifar10.sh reads SELECT as its protocol, so
  # the final figures' runs get it only when launch.sh's environment names it
  local select=${SELECT:-}; [[ $name == *_search ]] && select=${SELECT:-$STAGE/select}
  # appended: a chain may run one script twice (superres, then superres SR_TAG=_band test samples)
  env OUT="$dir" ROOT="$dir" SELECT="$select" "${settings[@]}" bash "$script" "$@" >> "$log" 2>&1
  local status=$?; echo "$name exit $status"; return $status
}
run_chain() {  # run_chain SCRIPT [arg ...] [+ SCRIPT ...]: one after another, stopping at the first that fails
  local command=() word
  for word in "$@" +; do
    if [ "$word" = + ]; then run_script "${command[@]}" || return 1; command=()
    else command+=("$word"); fi
  done
}
case ${1:-} in
  table4|cifar10|superres|tok_search|gen_search|sweep_search)
    source scripts/run_variants.sh  # gpu_of
    chain=() k=0
    for word in "$@" //; do  # chains between // words run at the same time, the k-th on gpu_of k
      if [ "$word" = // ]; then
        (export CUDA_VISIBLE_DEVICES=$(gpu_of $k); run_chain "${chain[@]}") & chain=() k=$((k + 1))
      else chain+=("$word"); fi
    done
    wait ;;
  *) bash scripts/table4.sh "$@" > "$ROOT/summary.txt" 2>&1; echo "table4 exit $?" ;;
esac
date; touch "$STAGE/DONE"
