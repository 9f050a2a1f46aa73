#!/usr/bin/env bash
# Table 4 on CIFAR-10: the same budget for every row, each on scripts/cifar10.sh's tokenizer recipe (TOK_RECIPE,
# the search's winner) and generator recipe, N_TOKENS tokens per image.
#   DATA=../shared/data/cifar10 ROOT=out/table4 bash scripts/table4.sh [row ...]
# Rows: titok (no spectral supervision, no causal mask), spectral (+ spectral supervision, uniform w_i),
# causal (+ spectral causal mask), nonuniform (+ eq. (9)'s schedule: full SpectralAR). At 32 px with N = 32 the
# strict `nonuniform` schedule is the uniform one (one frequency per token), so that row uses NONUNIFORM =
# nonuniform_shared (w_i = 1 x 4, 2 x 4, 3 x 4, 4 x 4, 5, 5, ..., 8, 8, 11, 14, ..., 32).
# The recorded table (docs/results.md) had TOK_RECIPE= N_TOKENS=16 NONUNIFORM=nonuniform (w_i 1..12, 14, 20, 26,
# 32 against 2, 4, ..., 32) and the generator recipe of that time.
# The rows run at the same time, row j on GPU j mod GPUS (several rows share a GPU when there are fewer
# GPUs than rows); each writes $ROOT/<row>/run.log. Every row samples with the same settings and seed
# (cifar10.sh's sample stage: CFG=$CFG, temperature 1, no top-k / top-p, seed 0).
set -euo pipefail
ROOT=${ROOT:-out/table4}
source "$(dirname "$0")/run_variants.sh"
export STATS=${STATS:-$ROOT/cifar10_train_stats.npz} TOK_STEPS=${TOK_STEPS:-4000} GEN_STEPS=${GEN_STEPS:-3000}
N_TOKENS=${N_TOKENS:-32} NONUNIFORM=${NONUNIFORM:-nonuniform_shared}
export CFG=${CFG:-1.5} WORKERS=${WORKERS:-3}
rows=("$@"); [ ${#rows[@]} -eq 0 ] && rows=(titok spectral causal nonuniform)

row_flags() {  # the train_tok.py flags of row $1
  case $1 in
    titok)      echo "--no_spectral --no_causal --schedule uniform" ;;
    spectral)   echo "--no_causal --schedule uniform" ;;
    causal)     echo "--schedule uniform" ;;
    nonuniform) echo "--schedule $NONUNIFORM" ;;
    *) echo "unknown row $1: use titok spectral causal nonuniform" >&2; exit 2 ;;
  esac
}
check_variants row_flags "${rows[@]}"

run_row() {  # run_row NAME DIR: run_variants' command
  OUT=$2 TOK_FLAGS="--n_tokens $N_TOKENS $(row_flags "$1")" bash "$(dirname "$0")/cifar10.sh" tok gen sample fid
}
OUT=$ROOT bash "$(dirname "$0")/cifar10.sh" stats
run_variants 'row ' "$ROOT/" run_row "${rows[@]}"
for row in "${rows[@]}"; do
  [ -f "$ROOT/$row/samples/fid.json" ] || continue
  python -c "import json,sys; r=json.load(open('$ROOT/$row/samples/fid.json')); t=json.load(open('$ROOT/$row/tok/rfid.json')); print(f'$row: gFID-50k {r[\"fid\"]:.2f}  rFID {t[\"fid\"]:.2f}')"
done
exit $failed
