#!/usr/bin/env bash
# The CIFAR-10 tokenizer recipe search: variants of scripts/cifar10.sh's tok stage, each trained on the selection
# split's train/ and ranked by rFID (its val/ images reconstructed, against val/), with every prefix's fidelity to its
# low-pass target beside it. CIFAR-10 test is never read (docs/results.md, "Selection split").
#   DATA=../shared/data/cifar10 SELECT=out/cifar10_select ROOT=out/tok_search_select bash scripts/tok_search.sh [variant ...]
# SELECT: the split (scripts/selection_split.py), built from $DATA/train when missing. Variants (train_tok.py flags on
# top of the tok stage's; TOK_STEPS steps, default 10,000, unless the name gives the length; GAN from 60% of them):
#   control     the base recipe (with the EMA codebook kept consistent across dead-code restarts)
#   full_gan    half of the batch rebuilds the full image (--full_prefix_prob 0.5), GAN on full prefixes only
#   cond_gan    --full_prefix_prob 0.5, a discriminator told each target's cut-off w_i (--disc_cond)
#   lpips       full_gan + LPIPS on inputs upsampled to 128 px (--lpips_resize 128)
#   lpips_cond  cond_gan + LPIPS on inputs upsampled to 128 px
#   lpips_k4096 lpips + a 4,096-code codebook (384 bits per image instead of 320): scripts/cifar10.sh's recipe
#   lpips_cond_k4096  lpips_cond + a 4,096-code codebook
#   lpips_k8192, lpips_k16384  lpips with 8,192 / 16,384 codes
#   lpips_k4096_dim8, lpips_k4096_dim16, lpips_k4096_dim32  lpips_k4096 with 8 / 16 / 32-dimensional codes (preset: 12)
#   lpips64_k4096  lpips_k4096 with LPIPS on inputs upsampled to 64 px, not 128: VGG16 at
#               128 px is 7.7 of a step's 11.1 TFLOP (docs/performance.md), so at 64 px a step has about half the
#               FLOPs but, bound by kernel launches, takes only about a fifth less time on an H200; at 10,000 steps
#               it cost 13.7 rFID against lpips_k4096 on the selection split (docs/results.md), so it is left
#               out of the default list; lpips64_k4096_20k asks whether twice the steps buy that back
#   VARIANT_Nk  any variant above trained N thousand steps instead of TOK_STEPS (its schedule and GAN start scaled),
#               e.g. lpips_k4096_20k, lpips_k8192_20k
#   VARIANT_sK  any variant above trained with seed K (default 0), e.g. lpips_k4096_s1: the run-to-run noise that a
#               variant's lead must exceed (two seeds of the full configuration differed by 8.5 rFID in Table 4)
# Variant j runs on GPU j mod GPUS, one at a time on each GPU (RUNS_PER_GPU=1; RUNS_PER_GPU= runs all at once),
# each under $ROOT/<variant>/ (cifar10.sh's layout: tok/ckpt.pt, tok/eval.jsonl, tok/rfid_val.json, run.log). A
# variant whose rfid_val.json is written is not trained again (delete $ROOT/<variant> to retrain it); one with a
# checkpoint continues it. TOK_CHUNK=10000: each variant trains at most 10,000 steps per run of this script, so the
# same command, run four times, trains lpips_k4096_40k.
# Last: $ROOT/summary.json and a table, which names the variants not finished yet.
# INCEPTION= and LPIPS= name weight files when the packages are not installed (as for cifar10.sh).
set -euo pipefail
DATA=${DATA:-../shared/data/cifar10}
SELECT=${SELECT:-out/cifar10_select}
ROOT=${ROOT:-out/tok_search_select}
source "$(dirname "$0")/run_variants.sh"
export DATA SELECT TOK_STEPS=${TOK_STEPS:-10000} TOK_CHUNK=${TOK_CHUNK:-} WORKERS=${WORKERS:-3} TOK_RECIPE=  # variants carry their recipe
COMPILE=${COMPILE---compile}  # COMPILE= for a CPU dry run
# one tokenizer fills an H100 (two sharing one trained at 9.8 it/s each, one alone at 21; on an H200 sharing gained
# about a fifth): one at a time costs little and scores the first variant in half the time (docs/results.md)
RUNS_PER_GPU=${RUNS_PER_GPU-1}
LPIPS_RECIPE="--full_prefix_prob 0.5 --gan_full_only --lpips_resize 128"  # the lpips variant's flags
LPIPS64_RECIPE=${LPIPS_RECIPE/--lpips_resize 128/--lpips_resize 64}     # the same with LPIPS at 64 px
variants=("$@"); [ ${#variants[@]} -eq 0 ] && variants=(lpips_k4096 lpips_k4096_20k lpips_k4096_40k lpips_k8192 lpips_k16384
  lpips_k4096_dim8 lpips_k4096_dim16 lpips_k4096_dim32)

variant_seed() {  # the training seed of variant $1: K of a name ending in _sK, else 0
  if [[ $1 =~ _s([0-9]+)$ ]]; then echo "${BASH_REMATCH[1]}"; else echo 0; fi
}

variant_base() {  # variant $1 without its _sK suffix: the configuration that its seeds share
  echo "${1%_s"$(variant_seed "$1")"}"
}

variant_settings() {  # "STEPS FLAGS" of variant $1: its length and its train_tok.py flags on top of the tok stage's
  local base flags
  base=$(variant_base "$1")  # the _sK suffix comes last: the _Nk suffix is the base's
  case $(without_steps "$base") in
    control)     flags= ;;
    full_gan)    flags="--full_prefix_prob 0.5 --gan_full_only" ;;
    cond_gan)    flags="--full_prefix_prob 0.5 --disc_cond" ;;
    lpips_cond)  flags="--full_prefix_prob 0.5 --disc_cond --lpips_resize 128" ;;
    lpips)       flags=$LPIPS_RECIPE ;;
    lpips_k4096) flags="$LPIPS_RECIPE --codebook_size 4096" ;;
    lpips_cond_k4096) flags="--full_prefix_prob 0.5 --disc_cond --lpips_resize 128 --codebook_size 4096" ;;
    lpips_k8192)  flags="$LPIPS_RECIPE --codebook_size 8192" ;;
    lpips_k16384) flags="$LPIPS_RECIPE --codebook_size 16384" ;;
    lpips_k4096_dim8)  flags="$LPIPS_RECIPE --codebook_size 4096 --code_dim 8" ;;
    lpips_k4096_dim16) flags="$LPIPS_RECIPE --codebook_size 4096 --code_dim 16" ;;
    lpips_k4096_dim32) flags="$LPIPS_RECIPE --codebook_size 4096 --code_dim 32" ;;
    lpips64_k4096)     flags="$LPIPS64_RECIPE --codebook_size 4096" ;;
    *) echo "unknown variant $1: use control cond_gan full_gan lpips_cond lpips lpips_k4096 lpips_cond_k4096" \
         "lpips_k8192 lpips_k16384 lpips_k4096_dim8 lpips_k4096_dim16 lpips_k4096_dim32 lpips64_k4096," \
         "each with an optional length suffix _Nk (N thousand steps) and then seed suffix _sK" >&2
       exit 2 ;;
  esac
  echo "$(steps_of "$base" "$TOK_STEPS") $flags"
}
check_variants variant_settings "${variants[@]}"

train_variant() {  # train_variant NAME DIR: run_variants' command
  local steps flags
  read -r steps flags <<<"$(variant_settings "$1")"
  OUT=$2 SEED=$(variant_seed "$1") TOK_STEPS=$steps TOK_FLAGS="$COMPILE $flags" bash "$(dirname "$0")/cifar10.sh" tok
}
OUT=$ROOT bash "$(dirname "$0")/cifar10.sh" split  # once, before the variants read it at the same time
pending_variants 'variant ' "$ROOT/" tok/rfid_val.json "${variants[@]}"  # a scored variant is not trained again
run_variants 'variant ' "$ROOT/" train_variant "${pending[@]}"

# each variant as NAME/BASE/SEED, so that the summary groups seeds by the suffix parsed above
python - "$ROOT" $(for v in "${variants[@]}"; do echo "$v/$(variant_base "$v")/$(variant_seed "$v")"; done) <<'EOF'
import json, os, sys
root, variants = sys.argv[1], [spec.split('/') for spec in sys.argv[2:]]
rows, unfinished = [], []
for v, base, seed in variants:
    tok = os.path.join(root, v, 'tok')
    if not os.path.exists(os.path.join(tok, 'rfid_val.json')):
        unfinished.append(v)
        continue
    evaluation = [json.loads(line) for line in open(os.path.join(tok, 'eval.jsonl'))][-1]
    rows.append(dict(variant=v, base=base, seed=int(seed),
                     steps=evaluation['step'], scored_on=evaluation['data'],
                     rfid_val=json.load(open(os.path.join(tok, 'rfid_val.json')))['fid'],
                     psnr_at_N=evaluation['psnr_vs_image_at_N'], psnr_vs_lowpass_at=evaluation['psnr_vs_lowpass_at'],
                     codebook_used=evaluation['codebook_used'], codebook_perplexity=evaluation['codebook_perplexity'],
                     minutes_last_run=evaluation['run_wall_s'] / 60))
print(f"{'variant':<18} {'steps':>6} {'rFID val':>8} {'PSNR@N':>7} {'vs low-pass @1/2/4/8':>24} {'used':>6} "
      f"{'perplexity':>10} {'min':>5}")
for r in rows:
    prefixes = '/'.join(f"{v:.2f}" for v in r['psnr_vs_lowpass_at'].values())
    print(f"{r['variant']:<18} {r['steps']:>6} {r['rfid_val']:>8.2f} {r['psnr_at_N']:>7.2f} {prefixes:>24} "
          f"{r['codebook_used']:>6.1%} {r['codebook_perplexity']:>10.0f} {r['minutes_last_run']:>5.1f}")
for base in dict.fromkeys(r['base'] for r in rows):  # a lead between variants counts once it exceeds this
    seeds = {r['seed']: r['rfid_val'] for r in rows if r['base'] == base}
    if len(seeds) > 1:
        print(f"{base}: rFID val {' / '.join(f'{v:.2f}' for v in seeds.values())} over seeds "
              f"{' / '.join(map(str, seeds))}, spread {max(seeds.values()) - min(seeds.values()):.2f}")
if unfinished:
    print(f"not finished (run the same command again to continue): {' '.join(unfinished)}")
json.dump(rows, open(os.path.join(root, 'summary.json'), 'w'), indent=1)
EOF
exit $failed
