#!/usr/bin/env bash
# Super-resolution by spectral completion against real high-resolution images (docs/superres.md): a tokenizer and a
# generator trained on CIFAR-10 box-downsampled to 16 px, then 16 -> 32 px by plain bicubic upsampling and by stride
# and patch completion at each k of $KEEP (k = N = 32: the tokenizer alone; <split>_upsampled: the split alone),
# scored against the real 32 px images.
#   DATA=../shared/data/cifar10 OUT=out/superres16 bash scripts/superres_cifar.sh [stage ...]
# Stages (default: all, in order; each reads what the earlier ones wrote under $OUT, so any can be re-run alone):
#   stats    FID statistics of the 50,000 training images at 32 px (skipped when $STATS exists)
#   tok, gen scripts/cifar10.sh's tok and gen stages at --image_size 16 --patch_size 2 (the 8 x 8 patch grid of its
#            32 px tokenizer) without the GAN, whose discriminator needs 24 px: $OUT/tok, $OUT/gen/best.pt. Its
#            tok/rfid.json compares the 16 px reconstructions with the 32 px test images. They may run on different
#            machines: gen reads only the tokenizer's weights, so scripts/export_weights.py's file of $OUT/tok/ckpt.pt,
#            put in its place, serves.
#   test     the 10,000 test images downsampled to 16 px and super-resolved: PSNR and LPIPS against their originals,
#            FID against the training statistics ($OUT/test$SR_TAG)
#   samples  10,000 images sampled at 16 px (seed 1; kept in $OUT/samples_16px and reused: delete them after
#            changing SAMPLING or the generator) and super-resolved: FID against the training statistics, the
#            paper's Table 3 setting of generated images and a real high-resolution reference ($OUT/samples$SR_TAG)
# Each of test and samples writes superres.json (per output: PSNR, LPIPS, FID), side_by_side.png and the .npz files.
# Cost on one H100 (results/superres16/): tok 14.9 minutes (10,000 steps) while another training shared the GPU;
# stats 0.4; gen 2.8 (3,000 steps; validation NLL lowest at step 2,000); test and samples about 5.5 together, and
# as much again for a second run of them with other SR_FLAGS (SR_TAG): about 13 minutes after the tokenizer.
set -euo pipefail
DATA=${DATA:-../shared/data/cifar10}        # train/ and test/ in class folders, 32 px
OUT=${OUT:-out/superres16}
KEEP=${KEEP:-16 20 25 28 32}                # k kept of N = 32; w_k <= 8 = S/2 for k <= 25, superres.py's default
PER_CLASS=${PER_CLASS:-1000}                # samples stage: 10,000 generated images
SAMPLING=${SAMPLING:---cfg 1.0 --temperature 1.1}  # sample.py's and the completion's: the 32 px full row's best (docs/results.md)
SR_FLAGS=${SR_FLAGS:-}                      # more superres.py flags, e.g. --shared_noise or --keep_input_band
SR_TAG=${SR_TAG:-}                          # test and samples write $OUT/test$SR_TAG and $OUT/samples$SR_TAG, so that a
                                            # run with other SR_FLAGS (SR_TAG=_band) keeps the first's figures
TOK_STEPS=${TOK_STEPS:-10000}               # the measured run's tokenizer length (cifar10.sh's is 20,000 at 32 px)
GEN_STEPS=${GEN_STEPS:-3000}                # the measured run's generator length
GEN_PRESET=${GEN_PRESET:-cifar_d8}          # and its generator (cifar10.sh's default: cifar_d12)
GEN_DROPOUT=${GEN_DROPOUT:-0.1}
STATS=${STATS:-$OUT/cifar10_train_stats.npz}  # the same file as scripts/cifar10.sh's: one can serve both
[ -n "${INCEPTION:-}" ] && WEIGHTS_FID=(--inception "$INCEPTION") || WEIGHTS_FID=()
[ -n "${LPIPS:-}" ] && WEIGHTS_LPIPS=(--lpips_path "$LPIPS") || WEIGHTS_LPIPS=()
GEN=$OUT/gen/best.pt
STAGES=(stats tok gen test samples)
stages=("$@"); [ ${#stages[@]} -eq 0 ] && stages=("${STAGES[@]}")
for stage in "${stages[@]}"; do  # a misspelt stage stops before any work
  [[ " ${STAGES[*]} " == *" $stage "* ]] || { echo "unknown stage $stage: use ${STAGES[*]}" >&2; exit 2; }
done
mkdir -p "$OUT"

superres() {  # superres DIR FLAGS...: plain and every split at every k of $KEEP, FID against $STATS, into $OUT/DIR
  local dir=$1; shift
  # shellcheck disable=SC2086
  python superres.py --ckpt "$GEN" --keep $KEEP $SAMPLING $SR_FLAGS --batch_size 1000 --fid_ref "$STATS" \
    "${WEIGHTS_FID[@]}" --out "$OUT/$dir" "$@"
}
for stage in "${stages[@]}"; do
  case $stage in
  stats)
    [ -f "$STATS" ] || python fid.py --no-pr --save-stats "$STATS" "$DATA/train" "${WEIGHTS_FID[@]}" ;;
  tok|gen)
    DATA=$DATA OUT=$OUT TOK_STEPS=$TOK_STEPS GEN_STEPS=$GEN_STEPS GEN_PRESET=$GEN_PRESET GEN_DROPOUT=$GEN_DROPOUT \
      TOK_FLAGS="${TOK_FLAGS---compile} --image_size 16 --patch_size 2 --gan_weight 0" \
      bash "$(dirname "$0")/cifar10.sh" "$stage" ;;
  test)
    superres "test$SR_TAG" --input "$DATA/test" --downsample "${WEIGHTS_LPIPS[@]}" ;;
  samples)  # the 16 px samples once: every SR_TAG super-resolves the same images
    samples16=$OUT/samples_16px/samples_$((PER_CLASS * 10))x16x16x3.npz
    # shellcheck disable=SC2086
    [ -f "$samples16" ] || python sample.py --ckpt "$GEN" --classes all --per_class "$PER_CLASS" --batch_size 1000 \
      --seed 1 $SAMPLING --out "$OUT/samples_16px"
    superres "samples$SR_TAG" --input "$samples16" ;;
  esac
done
