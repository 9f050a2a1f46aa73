#!/usr/bin/env bash
# CIFAR-10 end to end on one GPU: tokenizer -> tokens -> generator -> 50k samples -> FID against train.
#   bash scripts/cifar10.sh [stage ...]     stages: stats tok rfid_train gen sweep sample fid truncate
#                                           (default: all but rfid_train, in order)
#     rfid_train  the 50k training images reconstructed and scored against the gFID reference (train statistics),
#               so that gFID - rFID compares the generator with its tokenizer on one footing
#     sweep     sweep.py by FID, 10k samples each, seed 1 (held out from the final seed 0), in two rounds:
#               CFG x temperature, then top-k x top-p at the best of round 1 (coordinate search: a
#               full product is too long; SWEEP_TOPKS=0 SWEEP_TOPPS=0 skip it); writes $OUT/sweep/best_flags, the
#               sample.py flags of the lowest FID
#     sample    with $OUT/sweep/best_flags when it exists (delete it to go back to --cfg $CFG)
#     truncate  Table 3: drop the last k tokens, at the sweep's best setting (else --cfg $CFG), 10k samples, seed 1
# Every stage reads what the earlier ones wrote under $OUT, so any stage can be re-run alone.
# Settings come from the environment. The tok stage is the recipe that scripts/tok_search.sh chose by rFID among those
# keeping every prefix faithful to its low-pass target (docs/results.md, "Tokenizer recipe search"); the gen stage is
# the regularised recipe that scripts/gen_search.sh chose by validation NLL (docs/results.md, "Generalisation").
set -euo pipefail
DATA=${DATA:-../shared/data/cifar10}        # train/ and test/ in class folders
OUT=${OUT:-out/cifar10}
TOK_STEPS=${TOK_STEPS:-10000}
GEN_STEPS=${GEN_STEPS:-6000}
TOK_PRESET=${TOK_PRESET:-cifar}
GEN_PRESET=${GEN_PRESET:-cifar_d8}
TOK_BATCH=${TOK_BATCH:-256}
TOK_WARMUP=${TOK_WARMUP:-500}
GEN_BATCH=${GEN_BATCH:-512}
WORKERS=${WORKERS-12}                       # image loading processes; empty: the trainers' choice from the CPU cores
CFG=${CFG:-1.5}
SEED=${SEED:-0}                              # the tokenizer's and the generator's training seed
STATS=${STATS:-$OUT/cifar10_train_stats.npz}  # shared by several runs (scripts/table4.sh)
PER_CLASS=${PER_CLASS:-5000}                 # final samples: 50,000
SWEEP_PER_CLASS=${SWEEP_PER_CLASS:-1000}     # sweep and truncation samples: 10,000
SWEEP_CFGS=${SWEEP_CFGS:-1 1.5 2 3}
SWEEP_TEMPS=${SWEEP_TEMPS:-1.0 0.9}
SWEEP_TOPKS=${SWEEP_TOPKS:-0 100 300}       # round 2; 0: off
SWEEP_TOPPS=${SWEEP_TOPPS:-0 0.9 0.95}      # round 2; 0: off
TRUNCATE=${TRUNCATE:-0 4 8 12}              # k tokens dropped (N = 32: steps of N/8)
# the search's winner on top of the base recipe (rFID 14.4 at 10,000 steps); TOK_RECIPE= gives the base (tok_search.sh's control)
TOK_RECIPE=${TOK_RECIPE---full_prefix_prob 0.5 --gan_full_only --lpips_resize 128 --codebook_size 4096}
TOK_FLAGS=${TOK_FLAGS---compile}            # the train_tok.py extras; table4.sh passes each row's (no --compile)
WEIGHTS=()                                  # explicit weight files (INCEPTION=, LPIPS=) when the packages are not installed
[ -n "${INCEPTION:-}" ] && WEIGHTS_FID=(--inception "$INCEPTION") || WEIGHTS_FID=()
[ -n "${LPIPS:-}" ] && WEIGHTS=(--lpips_path "$LPIPS")
mkdir -p "$OUT"

sampling_flags() {  # the sweep's best setting when the sweep stage has run, else --cfg $CFG (one word per flag)
  if [ -f "$OUT/sweep/best_flags" ]; then
    echo "$1: $(cat "$OUT/sweep/best_flags") (from $OUT/sweep/best_flags)" >&2; cat "$OUT/sweep/best_flags"
  else
    echo "$1: --cfg $CFG (no $OUT/sweep/best_flags)" >&2; echo "--cfg $CFG"
  fi
}
stages=("$@"); [ ${#stages[@]} -eq 0 ] && stages=(stats tok gen sweep sample fid truncate)
# the sweep and truncate stages: 10k samples per setting on the held-out seed 1
sweep=(python sweep.py --ckpt "$OUT/gen/best.pt" --ref "$STATS" --classes all --per_class "$SWEEP_PER_CLASS"
       --batch_size 1000 --seed 1 "${WEIGHTS_FID[@]}")

for stage in "${stages[@]}"; do
  case $stage in
  stats)  # reference statistics of the 50k training images (the gFID reference), with their pool features for
    # precision and recall
    [ -f "$STATS" ] || python fid.py --save-stats "$STATS" "$DATA/train" "${WEIGHTS_FID[@]}" ;;
  tok)
    python train_tok.py --preset "$TOK_PRESET" --data "$DATA/train" --out_dir "$OUT/tok" --batch_size "$TOK_BATCH" \
      --max_steps "$TOK_STEPS" --lr 3e-4 --min_lr 3e-5 --warmup "$TOK_WARMUP" --disc_start $((TOK_STEPS * 6 / 10)) \
      --restart_every 200 --log_every 100 --sample_every 1000 --ckpt_every 1000 ${WORKERS:+--workers "$WORKERS"} \
      --eval_data "$DATA/test" --eval_npz "$OUT/tok/recon_test.npz" --seed "$SEED" "${WEIGHTS[@]}" $TOK_RECIPE $TOK_FLAGS
    python fid.py "$OUT/tok/recon_test.npz" "$DATA/test" --no-pr --json "$OUT/tok/rfid.json" "${WEIGHTS_FID[@]}" ;;
  rfid_train)
    python train_tok.py --resume "$OUT/tok/ckpt.pt" --eval_only --data "$DATA/train" --eval_data "$DATA/train" \
      --eval_prefix_images 1000 --eval_npz "$OUT/tok_train/recon_train.npz" --out_dir "$OUT/tok_train" \
      --workers "$WORKERS" "${WEIGHTS[@]}"
    python fid.py "$OUT/tok_train/recon_train.npz" "$STATS" --no-pr --json "$OUT/tok_train/rfid.json" "${WEIGHTS_FID[@]}" ;;
  gen)
    python train_gen.py --preset "$GEN_PRESET" --tok_ckpt "$OUT/tok/ckpt.pt" --data "$DATA/train" \
      --val_data "$DATA/test" --augment 8 --ema 0.9995 --out_dir "$OUT/gen" --batch_size "$GEN_BATCH" \
      --max_steps "$GEN_STEPS" --lr 2e-4 --log_every 200 --eval_every 500 --ckpt_every 2000 \
      --sample_every 2000 --seed "$SEED" ${WORKERS:+--workers "$WORKERS"} ;;
  sample)
    python sample.py --ckpt "$OUT/gen/best.pt" --classes all --per_class "$PER_CLASS" --batch_size 1000 \
      $(sampling_flags sample) --seed 0 --progressive 8 --out "$OUT/samples" ;;
  fid)
    python fid.py "$(ls "$OUT"/samples/samples_*.npz | head -1)" "$STATS" --json "$OUT/samples/fid.json" "${WEIGHTS_FID[@]}" ;;
  sweep)  # the lists unquoted: one value per word; round 2's --top_k/--top_p come after (and override) round 1's flags
    "${sweep[@]}" --cfg $SWEEP_CFGS --temperature $SWEEP_TEMPS --json "$OUT/sweep/sweep.json" \
      --best_flags "$OUT/sweep/best_flags"
    [ "$SWEEP_TOPKS $SWEEP_TOPPS" = "0 0" ] || "${sweep[@]}" $(cat "$OUT/sweep/best_flags") --top_k $SWEEP_TOPKS \
      --top_p $SWEEP_TOPPS --json "$OUT/sweep/sweep_filter.json" --best_flags "$OUT/sweep/best_flags" ;;
  truncate)
    "${sweep[@]}" $(sampling_flags truncate) --truncate $TRUNCATE --json "$OUT/truncate/truncate.json" ;;
  *) echo "unknown stage $stage: use stats tok rfid_train gen sweep sample fid truncate" >&2; exit 2 ;;
  esac
done
