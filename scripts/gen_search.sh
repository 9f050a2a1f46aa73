#!/usr/bin/env bash
# The CIFAR-10 generator recipe search: regularisation and depth variants trained at one budget on the tokens of one
# tokenizer, on the selection split's train/ images, ranked by validation NLL on its val/ images against the NLL of
# training rows; each keeps best.pt by that validation NLL. CIFAR-10 test is never read (docs/results.md, "Selection split").
#   TOK=out/tok_search_select/lpips_k4096/tok/ckpt.pt DATA=../shared/data/cifar10 SELECT=out/cifar10_select \
#     ROOT=out/gen_search_select bash scripts/gen_search.sh [variant ...]
# SELECT: the split (scripts/selection_split.py), built from $DATA/train when missing; TOK should be a tokenizer
# trained on its train/ (tok_search.sh's), so that val/ is held out from the tokenizer too. The final run's tokenizer
# (cifar10.sh without SELECT, trained on all of $DATA/train) also serves, where training a split's twin would cost
# more than the search: val/ is then held out from the generators alone, which ranks them alike, and test stays unread.
# Variants (train_gen.py flags on top of the shared ones below):
#   old         the baseline: image + flip, no dropout, drop path 0.0333 (VAR's 0.1 x 8 / 24)
#   dropout     + dropout 0.1, drop path 0.1
#   augment     + 8 views per image (flip and zoom crops), dropout 0.1, drop path 0.1
#   augment_ema + EMA 0.9995 of the weights (the EMA model is evaluated and sampled); own_data.sh's recipe
#   strong      8 views, dropout 0.2, drop path 0.2
#   strong_ema  strong + EMA 0.9995
#   d12         the cifar_d12 preset, 8 views, dropout 0.1, drop path 0.1
#   d12_ema     d12 + EMA 0.9995
#   d12_strong_ema  the cifar_d12 preset, 8 views, dropout 0.2, drop path 0.2, EMA 0.9995; with _3k, cifar10.sh's
#   VARIANT_Nk  any variant above trained N thousand steps instead of STEPS (its cosine schedule ending there), e.g.
#               augment_ema_3k against augment_ema: the 6,000-step run's validation NLL is lowest at step 2,500,
#               still at mid-schedule learning rate (docs/results.md, "Full SpectralAR end to end")
# The variants run at the same time, variant j on GPU j mod GPUS; each writes $ROOT/<variant>/ (log.jsonl,
# nll.png, ckpt.pt, best.pt), run.log and, once it has trained all its steps, finished. The token files are encoded
# once into $ROOT first. Run again, the same command trains only the variants not finished (a lost machine costs the
# runs in progress only): one with a ckpt.pt continues it (train_gen.py --resume), a finished one keeps its folder;
# delete $ROOT/<variant> to train it anew, and use another ROOT for another TOK (the token files are TOK's).
# Last: $ROOT/summary.json and a table (best validation NLL, the training rows' NLL at that step, their
# ratio; a variant not finished is marked so, and sweep_search.sh does not pick it), and $ROOT/val_nll.png with
# every variant's validation curve. Each summary row holds its recipe too (steps, train_gen_flags), which
# cifar10.sh's FROM_SEARCH trains on all of CIFAR-10's training images for the final figures.
set -euo pipefail
TOK=${TOK:?set TOK to a tokenizer checkpoint}
DATA=${DATA:-../shared/data/cifar10}
SELECT=${SELECT:-out/cifar10_select}
ROOT=${ROOT:-out/gen_search_select}
STEPS=${STEPS:-6000}
WORKERS=${WORKERS:-4}
TRAIN=$SELECT/train HELD_OUT=$SELECT/val  # encode_tokens reads them
source "$(dirname "$0")/run_variants.sh"
SHARED=${SHARED:---batch_size 512 --lr 2e-4 --log_every 200 --eval_every 500 --ckpt_every 2000 --sample_every 0 --compile}
variants=("$@"); [ ${#variants[@]} -eq 0 ] && variants=(old dropout augment augment_ema strong strong_ema d12 d12_ema d12_strong_ema)

variant_flags() {  # the train_gen.py flags of variant $1 (its _Nk suffix aside), on top of $SHARED
  case $(without_steps "$1") in
    old)         echo "--preset cifar_d8 --augment 2 --dropout 0 --drop_path 0.0333" ;;
    dropout)     echo "--preset cifar_d8 --augment 2 --dropout 0.1 --drop_path 0.1" ;;
    augment)     echo "--preset cifar_d8 --augment 8 --dropout 0.1 --drop_path 0.1" ;;
    augment_ema) echo "--preset cifar_d8 --augment 8 --dropout 0.1 --drop_path 0.1 --ema 0.9995" ;;
    strong)      echo "--preset cifar_d8 --augment 8 --dropout 0.2 --drop_path 0.2" ;;
    strong_ema)  echo "--preset cifar_d8 --augment 8 --dropout 0.2 --drop_path 0.2 --ema 0.9995" ;;
    d12)         echo "--preset cifar_d12 --augment 8 --dropout 0.1 --drop_path 0.1" ;;
    d12_ema)     echo "--preset cifar_d12 --augment 8 --dropout 0.1 --drop_path 0.1 --ema 0.9995" ;;
    d12_strong_ema) echo "--preset cifar_d12 --augment 8 --dropout 0.2 --drop_path 0.2 --ema 0.9995" ;;
    *) echo "unknown variant $1: use old dropout augment augment_ema strong strong_ema d12 d12_ema d12_strong_ema," \
         "each with an optional length suffix _Nk" >&2; exit 2 ;;
  esac
}
check_variants variant_flags "${variants[@]}"

train_variant() {  # train_variant NAME DIR: run_variants' command
  local flags views resume=()
  flags=$(variant_flags "$1")
  views=$(sed 's/.*--augment \([0-9]*\).*/\1/' <<<"$flags")
  [ -f "$2/ckpt.pt" ] && resume=(--resume) && echo "variant $1: continuing $2/ckpt.pt"
  # --data and --val_data only check that the token files hold the split's images (no encoding: they exist)
  # shellcheck disable=SC2086
  python train_gen.py --tok_ckpt "$TOK" --tokens "$ROOT/tokens_k$views.npz" --val_tokens "$ROOT/val_tokens.npz" \
    --data "$TRAIN" --val_data "$HELD_OUT" --out_dir "$2" $SHARED --max_steps "$(steps_of "$1" "$STEPS")" $flags \
    "${resume[@]}" || return  # errexit is off here (run_variants calls this in an || list)
  date -u +%FT%TZ > "$2/finished"
}
mkdir -p "$ROOT"
DATA=$DATA SELECT=$SELECT OUT=$ROOT bash "$(dirname "$0")/cifar10.sh" split  # once, before anything reads it
encode_tokens 2
encode_tokens 8

pending_variants 'variant ' "$ROOT/" finished "${variants[@]}"  # a finished variant is not trained again
run_variants 'variant ' "$ROOT/" train_variant "${pending[@]}"

recipes=(); for v in "${variants[@]}"; do recipes+=("$v:$(steps_of "$v" "$STEPS"):$(variant_flags "$v")"); done
python - "$ROOT" "${recipes[@]}" <<'EOF'
import json, os, sys
root, recipes = sys.argv[1], [recipe.split(':', 2) for recipe in sys.argv[2:]]  # variant:steps:train_gen.py flags
rows = []
for v, steps, flags in recipes:
    path = os.path.join(root, v, 'log.jsonl')
    evals = [r for r in map(json.loads, open(path)) if 'val_nll' in r] if os.path.exists(path) else []
    if not evals:
        continue
    best = min(evals, key=lambda r: r['val_nll'])
    rows.append(dict(variant=v, best_step=best['step'], best_val_nll=best['val_nll'], train_nll_at_best=best['train_nll'],
                     ratio_at_best=best['val_over_train'], last_step=evals[-1]['step'], last_val_nll=evals[-1]['val_nll'],
                     last_train_nll=evals[-1]['train_nll'], finished=os.path.exists(os.path.join(root, v, 'finished')),
                     steps=int(steps), train_gen_flags=flags))
print(f"{'variant':<18} {'best step':>9} {'val NLL':>8} {'train NLL':>9} {'ratio':>6} | {'last val':>8} {'last train':>10}")
for r in rows:
    print(f"{r['variant']:<18} {r['best_step']:>9} {r['best_val_nll']:>8.2f} {r['train_nll_at_best']:>9.2f} "
          f"{r['ratio_at_best']:>6.3f} | {r['last_val_nll']:>8.2f} {r['last_train_nll']:>10.2f}"
          + ('' if r['finished'] else f"  not finished (step {r['last_step']}): run the same command again"))
json.dump(rows, open(os.path.join(root, 'summary.json'), 'w'), indent=1)
EOF
logs=(); for v in "${variants[@]}"; do [ -f "$ROOT/$v/log.jsonl" ] && logs+=("$ROOT/$v/log.jsonl"); done
[ ${#logs[@]} -gt 0 ] && python plot.py "${logs[@]}" --keys val_nll --out "$ROOT/val_nll.png" --title 'validation NLL per sequence (nats)'
exit $failed
