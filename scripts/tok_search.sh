#!/usr/bin/env bash
# The CIFAR-10 tokenizer recipe search: variants of scripts/cifar10.sh's tok stage at one budget, ranked by rFID
# (reconstructions of CIFAR-10 test against test), with every prefix's fidelity to its low-pass target beside it.
#   DATA=../shared/data/cifar10 ROOT=out/tok_search bash scripts/tok_search.sh [variant ...]
# Variants (train_tok.py flags on top of the tok stage's; TOK_STEPS steps, GAN from 60% of them):
#   control     the recorded recipe (with the EMA codebook kept consistent across dead-code restarts)
#   full_gan    half of the batch rebuilds the full image (--full_prefix_prob 0.5), GAN on full prefixes only
#   cond_gan    --full_prefix_prob 0.5, a discriminator told each target's cut-off w_i (--disc_cond)
#   lpips       full_gan + LPIPS on inputs upsampled to 128 px (--lpips_resize 128)
#   lpips_cond  cond_gan + LPIPS on inputs upsampled to 128 px
#   lpips_k4096 lpips + a 4,096-code codebook (384 bits per image instead of 320)
#   lpips_cond_k4096  lpips_cond + a 4,096-code codebook
# The variants run at the same time, variant j on GPU j mod GPUS, each under $ROOT/<variant>/ (cifar10.sh's
# layout: tok/ckpt.pt, tok/eval.jsonl, tok/rfid.json, run.log). Last: $ROOT/summary.json and a table.
# INCEPTION= and LPIPS= name weight files when the packages are not installed (as for cifar10.sh).
set -euo pipefail
DATA=${DATA:-../shared/data/cifar10}
ROOT=${ROOT:-out/tok_search}
source "$(dirname "$0")/run_variants.sh"
export DATA TOK_STEPS=${TOK_STEPS:-6000} WORKERS=${WORKERS:-3} TOK_RECIPE=  # variants on top of the base recipe
COMPILE=${COMPILE---compile}  # COMPILE= for a CPU dry run
variants=("$@"); [ ${#variants[@]} -eq 0 ] && variants=(control cond_gan full_gan lpips_cond lpips lpips_k4096)

variant_flags() {  # the train_tok.py flags of variant $1, on top of the tok stage's
  case $1 in
    control)     echo "" ;;
    full_gan)    echo "--full_prefix_prob 0.5 --gan_full_only" ;;
    cond_gan)    echo "--full_prefix_prob 0.5 --disc_cond" ;;
    lpips_cond)  echo "--full_prefix_prob 0.5 --disc_cond --lpips_resize 128" ;;
    lpips)       echo "--full_prefix_prob 0.5 --gan_full_only --lpips_resize 128" ;;
    lpips_k4096) echo "--full_prefix_prob 0.5 --gan_full_only --lpips_resize 128 --codebook_size 4096" ;;
    lpips_cond_k4096) echo "--full_prefix_prob 0.5 --disc_cond --lpips_resize 128 --codebook_size 4096" ;;
    *) echo "unknown variant $1: use control cond_gan full_gan lpips_cond lpips lpips_k4096 lpips_cond_k4096" >&2; exit 2 ;;
  esac
}
check_variants variant_flags "${variants[@]}"

train_variant() {  # train_variant NAME DIR: run_variants' command
  OUT=$2 TOK_FLAGS="$COMPILE $(variant_flags "$1")" bash "$(dirname "$0")/cifar10.sh" tok
}
run_variants 'variant ' "$ROOT/" train_variant "${variants[@]}"

python - "$ROOT" "${variants[@]}" <<'EOF'
import json, os, sys
root, variants = sys.argv[1], sys.argv[2:]
rows = []
for v in variants:
    tok = os.path.join(root, v, 'tok')
    if not os.path.exists(os.path.join(tok, 'rfid.json')):
        continue
    evaluation = [json.loads(line) for line in open(os.path.join(tok, 'eval.jsonl'))][-1]
    rows.append(dict(variant=v, rfid=json.load(open(os.path.join(tok, 'rfid.json')))['fid'],
                     psnr_at_N=evaluation['psnr_vs_image_at_N'], psnr_vs_lowpass_at=evaluation['psnr_vs_lowpass_at'],
                     codebook_used=evaluation['codebook_used'], codebook_perplexity=evaluation['codebook_perplexity'],
                     minutes=evaluation['run_wall_s'] / 60))
print(f"{'variant':<16} {'rFID':>7} {'PSNR@N':>7} {'vs low-pass @1/2/4/8':>24} {'used':>6} {'perplexity':>10} {'min':>5}")
for r in rows:
    prefixes = '/'.join(f"{v:.2f}" for v in r['psnr_vs_lowpass_at'].values())
    print(f"{r['variant']:<16} {r['rfid']:>7.2f} {r['psnr_at_N']:>7.2f} {prefixes:>24} {r['codebook_used']:>6.1%} "
          f"{r['codebook_perplexity']:>10.0f} {r['minutes']:>5.1f}")
json.dump(rows, open(os.path.join(root, 'summary.json'), 'w'), indent=1)
EOF
exit $failed
