#!/usr/bin/env bash
# Table 4 on CIFAR-10: the same budget for every row, N = 16 tokens so that the non-uniform schedule
# differs from the uniform one at 32 px (w_i: 1..12, 14, 20, 26, 32 vs 2, 4, ..., 32).
#   DATA=../shared/data/cifar10 ROOT=out/table4 bash scripts/table4.sh [row ...]
# Rows: titok (no spectral supervision, no causal mask), spectral (+ spectral supervision),
# causal (+ spectral causal mask), nonuniform (+ non-uniform schedule: full SpectralAR).
set -euo pipefail
ROOT=${ROOT:-out/table4}
export STATS=${STATS:-$ROOT/cifar10_train_stats.npz} TOK_STEPS=${TOK_STEPS:-3000} GEN_STEPS=${GEN_STEPS:-3000}
rows=("$@"); [ ${#rows[@]} -eq 0 ] && rows=(titok spectral causal nonuniform)
OUT=$ROOT bash "$(dirname "$0")/cifar10.sh" stats
for row in "${rows[@]}"; do
  case $row in
    titok)      flags="--no_spectral --no_causal --schedule uniform" ;;
    spectral)   flags="--no_causal --schedule uniform" ;;
    causal)     flags="--schedule uniform" ;;
    nonuniform) flags="--schedule nonuniform" ;;
    *) echo "unknown row $row: use titok spectral causal nonuniform" >&2; exit 2 ;;
  esac
  OUT=$ROOT/$row TOK_FLAGS="--n_tokens 16 $flags" bash "$(dirname "$0")/cifar10.sh" tok gen sample fid
done
for row in "${rows[@]}"; do
  python -c "import json,sys; r=json.load(open('$ROOT/$row/samples/fid.json')); t=json.load(open('$ROOT/$row/tok/rfid.json')); print(f'$row: gFID-50k {r[\"fid\"]:.2f}  rFID {t[\"fid\"]:.2f}')"
done
