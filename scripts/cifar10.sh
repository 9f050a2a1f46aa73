#!/usr/bin/env bash
# CIFAR-10 end to end on one GPU: tokenizer -> tokens -> generator -> 50k samples -> FID against train.
#   bash scripts/cifar10.sh [stage ...]     stages: split stats tok score_tok decoder rfid_train gen sweep sample fid
#                                           truncate (default: stats tok [decoder] gen sample fid truncate, in order)
# Two protocols (docs/results.md, "Selection split"):
#   SELECT unset  the final figures: trained on all of $DATA/train, scored on CIFAR-10 test (rFID, PSNR, validation
#                 NLL) and against the statistics of the 50,000 training images (gFID). Test chooses nothing: the
#                 generator sampled is the last checkpoint of the selection split's winning length, at the selection
#                 split's best sampling setting (SAMPLING)
#   SELECT=DIR    recipe selection, CIFAR-10 test never read: the selection split DIR (scripts/selection_split.py;
#                 built from $DATA/train when missing, checked otherwise: the last VAL_PER_CLASS images of each class
#                 in DIR/val, the others in DIR/train). Trained on DIR/train, scored on DIR/val (tok/rfid_val.json),
#                 samples against the statistics of DIR/train (DIR/train_stats.npz). The search scripts set it.
# Stages:
#     split     only build (or check) $SELECT, as every run with SELECT does first
#     tok       continues $OUT/tok/ckpt.pt when there is one (delete $OUT/tok to train anew). TOK_CHUNK=K: at most K
#               steps per run of the stage (train_tok.py --steps_this_run), the schedule and GAN start still spanning
#               TOK_STEPS; the same command, run again, continues until it scores the tokenizer (40k steps in 10k pieces)
#     score_tok scores $OUT/tok/ckpt.pt on the held-out images as the tok stage does at its end, for a tokenizer
#               trained elsewhere (copied or exported there)
#     decoder   decoder fine-tuning (train_tok.py --init_from): DECODER_STEPS more steps of the decoder alone, the GAN
#               on from the start, from $OUT/tok/ckpt.pt into $OUT/decoder/, scored on the held-out images as the tok
#               stage is. Every image keeps its codes; with DECODER_STEPS > 0 the stages after it use
#               $OUT/decoder/ckpt.pt
#     rfid_train  the training images reconstructed and scored against the gFID reference (train statistics),
#               so that gFID - rFID compares the generator with its tokenizer on one footing; with precision and
#               recall, so that a generator's recall can be read against its tokenizer's
#     sweep     sweep.py by FID, 10k samples each, seed 1 (held out from the final seed 0): CFG x guidance ramp x
#               temperature, then, when SWEEP_TOPKS / SWEEP_TOPPS name values (off by default), top-k x top-p at the
#               best of that round (coordinate search: a full product is too long); writes $OUT/sweep/best_flags, the
#               sample.py flags of the lowest FID. Not a default stage: it scores against the gFID's reference, so
#               the final figures sample at SAMPLING, the best of the selection split's sweep (sweep_search.sh)
#     sample    with $OUT/sweep/best_flags when it exists (delete it to go back to $SAMPLING)
#     truncate  Table 3: drop the last k tokens, at the sweep's best setting (else $SAMPLING), 10k samples, seed 1
# Every stage reads what the earlier ones wrote under $OUT, so any stage can be re-run alone; sweep, sample and
# truncate sample GEN_CKPT (unless set: $OUT/gen/ckpt.pt, the last, for the final figures; $OUT/gen/best.pt, by
# the validation NLL on val/, with SELECT). Each finished stage appends its wall time to
# $OUT/stage_seconds.jsonl.
# Cost at the defaults, in GPU-minutes, measured on one H100 (results/cifar10/stage_seconds.jsonl; the tok stage's in
# results/cifar10_d8/): stats 0.55; tok 19.75 (20,000 steps at 21.3 it/s before the GAN and 19.3 with it, compiling,
# the test evaluation and rFID included); gen 4.8 (3,000 steps of cifar_d12 at about 12.5 it/s, the token files
# included); sample 0.37; fid 0.6; truncate 0.9: about 27 in all. On an H200, estimates (its tokenizer trains at 25
# it/s without the GAN and 23 with it, measured at 10,000 steps; the other stages not timed there): stats 0.5, tok
# about 17, gen about 4, sample + fid about 0.9, truncate about 0.8: about 23 in all. Not default stages: rfid_train
# 1.0; sweep 0.17 per 10,000-sample setting, on an H100; decoder 8.3-10.2 for 4,000 steps (compiling, evaluation and
# rFID included) with a second one sharing the H100 (about 10 it/s each; results/decoder_finetune/, where it did not
# lower rFID on the selection split). Each alone on its GPU: sampling beside another run is far slower
# (scripts/table4.sh).
# Settings come from the environment. The tok stage is the recipe that scripts/tok_search.sh chose by rFID among those
# keeping every prefix faithful to its low-pass target (docs/results.md, "Tokenizer recipe search"), ranked on
# CIFAR-10 test before the selection split existed; its length, 20,000 steps, won on the selection split (rFID val
# 14.49 against 20.94 at 10,000, "On the selection split"). The gen stage and SAMPLING are what the selection split's
# generator and sampling searches chose with this tokenizer (d12_strong_ema_3k: cifar_d12, dropout and drop path 0.2,
# EMA, 3,000 steps; CFG 1.5 ramped, temperature 1.0; docs/results.md, "Full SpectralAR at the script's defaults").
set -euo pipefail
DATA=${DATA:-../shared/data/cifar10}        # train/ and test/ in class folders
OUT=${OUT:-out/cifar10}
TOK_STEPS=${TOK_STEPS:-20000}                # the selection split's winner over 10,000 (header)
TOK_CHUNK=${TOK_CHUNK:-}                     # at most this many tokenizer steps per run of the tok stage; empty: all
GEN_STEPS=${GEN_STEPS:-3000}                 # gen_search.sh's d12_strong_ema_3k, the selection split's pick (header)
TOK_PRESET=${TOK_PRESET:-cifar}
GEN_PRESET=${GEN_PRESET:-cifar_d12}
GEN_DROPOUT=${GEN_DROPOUT:-0.2}              # dropout and drop path (d12_strong_ema_3k's)
TOK_BATCH=${TOK_BATCH:-256}
TOK_WARMUP=${TOK_WARMUP:-500}
GEN_BATCH=${GEN_BATCH:-512}
WORKERS=${WORKERS-12}                       # image loading processes; empty: the trainers' choice from the CPU cores
# without the sweep stage: the best of the selection split's sweep (results/sweep_search_select_final_tok/)
SAMPLING=${SAMPLING:---cfg 1.5 --cfg_ramp --temperature 1.0}
DECODER_STEPS=${DECODER_STEPS:-0}            # the decoder stage's steps (0: none; 4,000 did not pay on the split)
DECODER_LR=${DECODER_LR:-1e-4}               # its peak learning rate, cosine to a tenth of it
SEED=${SEED:-0}                              # the tokenizer's and the generator's training seed
SELECT=${SELECT:-}                           # a selection split: recipe selection instead of the final figures
VAL_PER_CLASS=${VAL_PER_CLASS:-500}          # the split's val images per class: 5,000 of CIFAR-10's 50,000
GEN_SAMPLE_STEP=${GEN_SAMPLE_STEP:-}         # the final figures' generator checkpoint (GEN_CKPT, below)
# the tokenizer the generator is trained on and decodes with: the decoder stage's when there is one
[ "$DECODER_STEPS" -gt 0 ] && TOK_CKPT=$OUT/decoder/ckpt.pt || TOK_CKPT=$OUT/tok/ckpt.pt
if [ -n "$SELECT" ]; then
  TRAIN=$SELECT/train HELD_OUT=$SELECT/val RFID_NAME=rfid_val.json
  STATS=${STATS:-$SELECT/train_stats.npz}    # the images the generator is trained on, as in the final gFID
else
  TRAIN=$DATA/train HELD_OUT=$DATA/test RFID_NAME=rfid.json
  STATS=${STATS:-$OUT/cifar10_train_stats.npz}  # shared by several runs (scripts/table4.sh)
fi
PER_CLASS=${PER_CLASS:-5000}                 # final samples: 50,000
SWEEP_PER_CLASS=${SWEEP_PER_CLASS:-1000}     # sweep and truncation samples: 10,000
# the grid around the full configuration's best (CFG 1.0, temperature 1.1; 0.9 lost by 1.8-2.6 FID at CFG 1 and 1.5,
# CFG 1.5 by 2.1 at temperature 1): docs/results.md, "Full SpectralAR end to end"
SWEEP_CFGS=${SWEEP_CFGS:-1 1.25 1.5 2}
SWEEP_TEMPS=${SWEEP_TEMPS:-1.0 1.1 1.2}
SWEEP_RAMPS=${SWEEP_RAMPS:-off}              # round 1's guidance: off (constant), on (ramped), or "off on"
# round 2 (0: off) is skipped by default: on the full configuration every top-k or top-p cost FID (top-k 100 / 300:
# +17.7 / +8.2; top-p 0.9 / 0.95: +1.7 / +0.8), since its samples lack diversity (recall 0.28), not precision
SWEEP_TOPKS=${SWEEP_TOPKS:-0}
SWEEP_TOPPS=${SWEEP_TOPPS:-0}
TRUNCATE=${TRUNCATE:-0 4 8 12}              # k tokens dropped (N = 32: steps of N/8)
# the search's winner on top of the base recipe (rFID 14.4 at 10,000 steps); TOK_RECIPE= gives the base (tok_search.sh's control)
TOK_RECIPE=${TOK_RECIPE---full_prefix_prob 0.5 --gan_full_only --lpips_resize 128 --codebook_size 4096}
TOK_FLAGS=${TOK_FLAGS---compile}            # the train_tok.py extras; table4.sh passes each row's (no --compile)
GEN_FLAGS=${GEN_FLAGS:-}                    # train_gen.py extras after the gen stage's, e.g. a gen_search.sh variant's
# FROM_SEARCH=DIR, sweep_search.sh's ROOT, for the final figures: the gen stage trains the recipe that the selection
# split's generator search chose (DIR/generator.json: its steps, and its train_gen.py flags before GEN_FLAGS), and
# the sampling stages take that search's best setting (DIR/sweep/best_flags) as SAMPLING
if [ -n "${FROM_SEARCH:-}" ]; then
  [ -z "$SELECT" ] || { echo "FROM_SEARCH gives the final figures the searches' picks: unset SELECT" >&2; exit 2; }
  [ -f "$FROM_SEARCH/sweep/best_flags" ] || { echo "FROM_SEARCH=$FROM_SEARCH: no sweep/best_flags there;" \
    "run scripts/sweep_search.sh with ROOT=$FROM_SEARCH first" >&2; exit 2; }
  recipe=$(python - "$FROM_SEARCH/generator.json" <<'EOF'
import json, os, sys
record = sys.argv[1]
if not os.path.exists(record):
    sys.exit(f"FROM_SEARCH: no {record}; run scripts/sweep_search.sh with GEN_SEARCH, which writes it")
chosen = json.load(open(record))
if 'train_gen_flags' not in chosen:
    sys.exit(f"FROM_SEARCH: {record} names {chosen.get('variant')} without its recipe (a gen_search.sh from before "
             "recipes were recorded): set GEN_PRESET, GEN_FLAGS and GEN_STEPS from scripts/gen_search.sh instead")
print(chosen['steps'], chosen['best_step'], chosen['train_gen_flags'])
EOF
  )
  read -r GEN_STEPS best_step flags <<< "$recipe"
  GEN_FLAGS="$flags $GEN_FLAGS" SAMPLING=$(cat "$FROM_SEARCH/sweep/best_flags")
  [ "$GEN_SAMPLE_STEP" != best ] || GEN_SAMPLE_STEP=$best_step
  echo "FROM_SEARCH: $GEN_STEPS generator steps with $GEN_FLAGS; sampling $SAMPLING" >&2
fi
# GEN_CKPT, the generator the sampling stages sample: best.pt is kept by the validation NLL, which is CIFAR-10
# test's without SELECT, so the final figures take the last checkpoint instead, or with GEN_SAMPLE_STEP=S the
# checkpoint of step S (the gen stage then checkpoints every S steps and keeps each as gen/ckpt_<step>.pt). S=best,
# with FROM_SEARCH: the step at which the picked recipe's validation NLL on the selection split was lowest, the
# checkpoint its sampling sweep ran on (1,500 for d12_strong_ema_3k; not measured yet on the final figures)
if [ -n "$GEN_SAMPLE_STEP" ]; then
  [ -z "$SELECT" ] && [[ $GEN_SAMPLE_STEP =~ ^[1-9][0-9]*$ ]] && [ "$GEN_SAMPLE_STEP" -le "$GEN_STEPS" ] || {
    echo "GEN_SAMPLE_STEP=$GEN_SAMPLE_STEP: a step from 1 to GEN_STEPS=$GEN_STEPS of the final figures' generator," \
      "or best with FROM_SEARCH; unset with SELECT, which samples best.pt" >&2; exit 2; }
  GEN_CHECKPOINTS=(--ckpt_every "$GEN_SAMPLE_STEP" --keep $(((GEN_STEPS + GEN_SAMPLE_STEP - 1) / GEN_SAMPLE_STEP)))
  GEN_CKPT=${GEN_CKPT:-$OUT/gen/ckpt_$(printf %07d "$GEN_SAMPLE_STEP").pt}
else
  GEN_CHECKPOINTS=(--ckpt_every 2000)
  [ -n "$SELECT" ] && GEN_CKPT=${GEN_CKPT:-$OUT/gen/best.pt} || GEN_CKPT=${GEN_CKPT:-$OUT/gen/ckpt.pt}
fi
WEIGHTS=()                                  # explicit weight files (INCEPTION=, LPIPS=) when the packages are not installed
[ -n "${INCEPTION:-}" ] && WEIGHTS_FID=(--inception "$INCEPTION") || WEIGHTS_FID=()
[ -n "${LPIPS:-}" ] && WEIGHTS=(--lpips_path "$LPIPS")
mkdir -p "$OUT"
[ -z "$SELECT" ] || python scripts/selection_split.py "$DATA/train" "$SELECT" --val_per_class "$VAL_PER_CLASS"

sampling_flags() {  # the sweep's best setting when the sweep stage has run, else $SAMPLING (one word per flag)
  if [ -f "$OUT/sweep/best_flags" ]; then
    echo "$1: $(cat "$OUT/sweep/best_flags") (from $OUT/sweep/best_flags)" >&2; cat "$OUT/sweep/best_flags"
  else
    echo "$1: $SAMPLING (no $OUT/sweep/best_flags)" >&2; echo "$SAMPLING"
  fi
}
# the tok and decoder stages: train_tok.py into DIR with the recipe (TOK_RECIPE, TOK_FLAGS last, so that they
# override), scored at the end on the held-out images, whose reconstructions DIR/$RECON then get their rFID, with
# precision and recall (against which the generator's samples read: a decoded sample is a reconstruction)
RECON=recon_$(basename "$HELD_OUT").npz
train_tokenizer() {  # train_tokenizer DIR [train_tok.py flag ...]
  local dir=$1; shift
  python train_tok.py --data "$TRAIN" --out_dir "$dir" --batch_size "$TOK_BATCH" --log_every 100 --sample_every 1000 \
    --ckpt_every 1000 ${WORKERS:+--workers "$WORKERS"} --eval_data "$HELD_OUT" --eval_npz "$dir/$RECON" --seed "$SEED" \
    "${WEIGHTS[@]}" "$@" $TOK_RECIPE $TOK_FLAGS
}
held_out_rfid() {  # held_out_rfid DIR: DIR/$RECON against the held-out images, into DIR/$RFID_NAME
  python fid.py "$1/$RECON" "$HELD_OUT" --json "$1/$RFID_NAME" "${WEIGHTS_FID[@]}"
}
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(stats tok $([ "$DECODER_STEPS" -eq 0 ] || echo decoder) gen sample fid truncate)
# the sweep and truncate stages: 10k samples per setting on the held-out seed 1
sweep=(python sweep.py --ckpt "$GEN_CKPT" --ref "$STATS" --classes all --per_class "$SWEEP_PER_CLASS"
       --batch_size 1000 --seed 1 "${WEIGHTS_FID[@]}")

for stage in "${stages[@]}"; do
  stage_start=$SECONDS
  case $stage in
  split)
    [ -n "$SELECT" ] || { echo "the split stage builds the selection split: set SELECT=path/to/split" >&2; exit 2; } ;;
  stats)  # reference statistics of the training images (the gFID reference), with their pool features for
    # precision and recall
    [ -f "$STATS" ] || python fid.py --save-stats "$STATS" "$TRAIN" "${WEIGHTS_FID[@]}" ;;
  tok)
    rm -f "$OUT/tok/$RECON"  # written when the run reaches TOK_STEPS: a piece that stops short leaves none
    resume=(); [ -f "$OUT/tok/ckpt.pt" ] && resume=(--resume) && echo "tok: continuing $OUT/tok/ckpt.pt" >&2
    train_tokenizer "$OUT/tok" --preset "$TOK_PRESET" --max_steps "$TOK_STEPS" --lr 3e-4 --min_lr 3e-5 \
      --warmup "$TOK_WARMUP" --disc_start $((TOK_STEPS * 6 / 10)) --restart_every 200 \
      ${TOK_CHUNK:+--steps_this_run "$TOK_CHUNK"} "${resume[@]}"
    if [ -n "$TOK_CHUNK" ] && [ ! -f "$OUT/tok/$RECON" ]; then
      echo "tok: a piece of TOK_CHUNK=$TOK_CHUNK steps done, short of TOK_STEPS=$TOK_STEPS: run the same command" \
        "again to continue; the stages after tok wait for the whole tokenizer" >&2
      exit 0
    fi
    held_out_rfid "$OUT/tok" ;;
  score_tok)
    python train_tok.py --resume "$OUT/tok/ckpt.pt" --eval_only --data "$TRAIN" --eval_data "$HELD_OUT" \
      --eval_npz "$OUT/tok/$RECON" --out_dir "$OUT/tok" ${WORKERS:+--workers "$WORKERS"} "${WEIGHTS[@]}"
    held_out_rfid "$OUT/tok" ;;
  decoder)
    [ "$DECODER_STEPS" -gt 0 ] || {
      echo "the decoder stage trains DECODER_STEPS steps: set DECODER_STEPS" >&2; exit 2; }
    rm -f "$OUT/decoder/$RECON"
    start=(--init_from "$OUT/tok/ckpt.pt"); [ -f "$OUT/decoder/ckpt.pt" ] && start=(--resume)
    # a new discriminator: the GAN from step 0, the decoder being trained already
    train_tokenizer "$OUT/decoder" --max_steps "$DECODER_STEPS" --lr "$DECODER_LR" \
      --min_lr "$(awk "BEGIN { print $DECODER_LR / 10 }")" --disc_start 0 "${start[@]}"
    held_out_rfid "$OUT/decoder" ;;
  rfid_train)
    python train_tok.py --resume "$TOK_CKPT" --eval_only --data "$TRAIN" --eval_data "$TRAIN" \
      --eval_prefix_images 1000 --eval_npz "$OUT/tok_train/recon_train.npz" --out_dir "$OUT/tok_train" \
      --workers "$WORKERS" "${WEIGHTS[@]}"
    python fid.py "$OUT/tok_train/recon_train.npz" "$STATS" --json "$OUT/tok_train/rfid.json" "${WEIGHTS_FID[@]}" ;;
  gen)
    python train_gen.py --preset "$GEN_PRESET" --tok_ckpt "$TOK_CKPT" --data "$TRAIN" \
      --val_data "$HELD_OUT" --augment 8 --dropout "$GEN_DROPOUT" --drop_path "$GEN_DROPOUT" --ema 0.9995 \
      --out_dir "$OUT/gen" --batch_size "$GEN_BATCH" \
      --max_steps "$GEN_STEPS" --lr 2e-4 --log_every 200 --eval_every 500 "${GEN_CHECKPOINTS[@]}" \
      --sample_every 2000 --seed "$SEED" ${WORKERS:+--workers "$WORKERS"} $GEN_FLAGS ;;
  sample)
    python sample.py --ckpt "$GEN_CKPT" --classes all --per_class "$PER_CLASS" --batch_size 1000 \
      $(sampling_flags sample) --seed 0 --progressive 8 --out "$OUT/samples" ;;
  fid)
    python fid.py "$(ls "$OUT"/samples/samples_*.npz | head -1)" "$STATS" --json "$OUT/samples/fid.json" "${WEIGHTS_FID[@]}" ;;
  sweep)  # the lists unquoted: one value per word; round 2's --top_k/--top_p come after (and override) round 1's flags
    "${sweep[@]}" --cfg $SWEEP_CFGS --cfg_ramp $SWEEP_RAMPS --temperature $SWEEP_TEMPS --json "$OUT/sweep/sweep.json" \
      --best_flags "$OUT/sweep/best_flags"
    [ "$SWEEP_TOPKS $SWEEP_TOPPS" = "0 0" ] || "${sweep[@]}" $(cat "$OUT/sweep/best_flags") --top_k $SWEEP_TOPKS \
      --top_p $SWEEP_TOPPS --json "$OUT/sweep/sweep_filter.json" --best_flags "$OUT/sweep/best_flags" ;;
  truncate)
    "${sweep[@]}" $(sampling_flags truncate) --truncate $TRUNCATE --json "$OUT/truncate/truncate.json" ;;
  *) echo "unknown stage $stage: use split stats tok score_tok decoder rfid_train gen sweep sample fid truncate" >&2
     exit 2 ;;
  esac
  # each stage's wall time, the source of the GPU-minutes quoted in the header and in docs/results.md
  echo "{\"stage\": \"$stage\", \"seconds\": $((SECONDS - stage_start)), \"ended\": \"$(date -u +%FT%TZ)\"}" \
    >> "$OUT/stage_seconds.jsonl"
done
