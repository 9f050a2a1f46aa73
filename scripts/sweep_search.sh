#!/usr/bin/env bash
# The CIFAR-10 sampling search: scripts/cifar10.sh's sweep stage on the selection split, for a generator that
# scripts/gen_search.sh trained on it. FID-10k (seed 1) of every setting against the statistics of the split's
# train/ images: the images the generator was trained on, as the final gFID-50k is against the 50,000 training
# images the final generator is trained on (docs/results.md, "Selection split"). CIFAR-10 test is never read.
#   GEN_CKPT=out/gen_search_select/augment_ema/best.pt DATA=../shared/data/cifar10 SELECT=out/cifar10_select \
#     ROOT=out/sweep_search_select bash scripts/sweep_search.sh
# GEN_SEARCH=DIR instead of GEN_CKPT: the best.pt of gen_search.sh's winner in DIR (its ROOT), the lowest best
# validation NLL among the finished variants whose ratio to the training rows' NLL there is at most MAX_RATIO
# (default 1.10, the bound the final generator must meet), recorded in $ROOT/generator.json; so `gen_search.sh` then
# `GEN_SEARCH=... sweep_search.sh` runs unattended.
# Round 1: CFG SWEEP_CFGS (above 2 included) x guidance constant and ramped (SWEEP_RAMPS) x temperature SWEEP_TEMPS;
# the grid reaches down to CFG 1, where both Table 4 rows of the grid 1-4 had their best FID, and up to temperature
# 1.2, past the full configuration's best of 1.1 (docs/results.md); round 2: top-k SWEEP_TOPKS x top-p SWEEP_TOPPS at
# the best of round 1 (scripts/cifar10.sh skips it; here it stays a search, with milder filters than the top-k 100
# and 300 that cost the full configuration 8 FID or more). Writes $ROOT/sweep/sweep.json,
# sweep_filter.json and best_flags (the winner's sample.py flags), and $SELECT/train_stats.npz once.
set -euo pipefail
export SELECT=${SELECT:-out/cifar10_select} OUT=${ROOT:-out/sweep_search_select}
if [ -z "${GEN_CKPT:-}" ] && [ -n "${GEN_SEARCH:-}" ]; then
  mkdir -p "$OUT"
  GEN_CKPT=$(python - "$GEN_SEARCH" "${MAX_RATIO:-1.10}" "$OUT/generator.json" <<'EOF'
import json, os, sys
search, max_ratio, record = sys.argv[1], float(sys.argv[2]), sys.argv[3]
summary = os.path.join(search, 'summary.json')
if not os.path.exists(summary):
    sys.exit(f"GEN_SEARCH={search}: no summary.json there; run scripts/gen_search.sh with ROOT={search} first")
rows = [row for row in json.load(open(summary)) if row.get('finished', True)]  # a variant cut short is no candidate
if not rows:
    sys.exit(f"GEN_SEARCH={search}: no variant there has finished; run scripts/gen_search.sh again with ROOT={search}")
kept = [row for row in rows if row['ratio_at_best'] <= max_ratio]
if not kept:
    ratios = ', '.join(f"{row['variant']} {row['ratio_at_best']:.3f}" for row in rows)
    sys.exit(f"GEN_SEARCH={search}: no variant's best validation NLL is within a ratio of {max_ratio} of its "
             f"training rows' ({ratios}); set MAX_RATIO higher or GEN_CKPT")
best = min(kept, key=lambda row: row['best_val_nll'])
best = {**best, 'gen_ckpt': os.path.join(search, best['variant'], 'best.pt'), 'max_ratio': max_ratio}
json.dump(best, open(record, 'w'), indent=1)
print(f"generator: {best['variant']}, validation NLL {best['best_val_nll']:.2f} at step {best['best_step']} "
      f"(ratio {best['ratio_at_best']:.3f}): {best['gen_ckpt']}", file=sys.stderr)
print(best['gen_ckpt'])
EOF
  )
fi
export GEN_CKPT=${GEN_CKPT:?set GEN_CKPT to a generator trained on the selection split (gen_search.sh: ROOT/VARIANT/best.pt), or GEN_SEARCH to the ROOT of gen_search.sh}
export SWEEP_CFGS=${SWEEP_CFGS:-1 1.5 2 3 4} SWEEP_RAMPS=${SWEEP_RAMPS:-off on} SWEEP_TEMPS=${SWEEP_TEMPS:-1.0 1.1 1.2}
export SWEEP_TOPKS=${SWEEP_TOPKS:-0 1000 2000} SWEEP_TOPPS=${SWEEP_TOPPS:-0 0.95 0.98}
bash "$(dirname "$0")/cifar10.sh" stats sweep
