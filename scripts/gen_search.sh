#!/usr/bin/env bash
# The CIFAR-10 generator recipe search: regularisation variants trained at one budget on the tokens of one
# tokenizer, ranked by validation NLL (CIFAR-10 test/) against the NLL of training rows.
#   TOK=out/cifar10/tok/ckpt.pt DATA=../shared/data/cifar10 ROOT=out/gen_search bash scripts/gen_search.sh [variant ...]
# Variants (train_gen.py flags on top of the shared ones below):
#   old         the baseline: image + flip, no dropout, drop path 0.0333 (VAR's 0.1 x 8 / 24)
#   dropout     + dropout 0.1, drop path 0.1
#   augment     + 8 views per image (flip and zoom crops), dropout 0.1, drop path 0.1
#   augment_ema + EMA 0.9995 of the weights (the EMA model is evaluated and sampled)
#   strong      8 views, dropout 0.2, drop path 0.2
#   d12         the cifar_d12 preset, 8 views, dropout 0.1, drop path 0.1
# The variants run at the same time, variant j on GPU j mod GPUS; each writes $ROOT/<variant>/ (log.jsonl,
# nll.png, ckpt.pt, best.pt) and run.log. The token files are encoded once into $ROOT first.
# Last: $ROOT/summary.json and a table (best validation NLL, the training rows' NLL at that step, their
# ratio), and $ROOT/val_nll.png with every variant's validation curve.
set -euo pipefail
TOK=${TOK:?set TOK to a tokenizer checkpoint}
DATA=${DATA:-../shared/data/cifar10}
ROOT=${ROOT:-out/gen_search}
STEPS=${STEPS:-6000}
WORKERS=${WORKERS:-4}
source "$(dirname "$0")/run_variants.sh"
SHARED=${SHARED:---batch_size 512 --lr 2e-4 --max_steps $STEPS --log_every 200 --eval_every 500 --ckpt_every 2000 --sample_every 0 --compile}
variants=("$@"); [ ${#variants[@]} -eq 0 ] && variants=(old dropout augment augment_ema strong d12)

variant_flags() {  # the train_gen.py flags of variant $1, on top of $SHARED
  case $1 in
    old)         echo "--preset cifar_d8 --augment 2 --dropout 0 --drop_path 0.0333" ;;
    dropout)     echo "--preset cifar_d8 --augment 2 --dropout 0.1 --drop_path 0.1" ;;
    augment)     echo "--preset cifar_d8 --augment 8 --dropout 0.1 --drop_path 0.1" ;;
    augment_ema) echo "--preset cifar_d8 --augment 8 --dropout 0.1 --drop_path 0.1 --ema 0.9995" ;;
    strong)      echo "--preset cifar_d8 --augment 8 --dropout 0.2 --drop_path 0.2" ;;
    d12)         echo "--preset cifar_d12 --augment 8 --dropout 0.1 --drop_path 0.1" ;;
    *) echo "unknown variant $1: use old dropout augment augment_ema strong d12" >&2; exit 2 ;;
  esac
}
check_variants variant_flags "${variants[@]}"

train_variant() {  # train_variant NAME DIR: run_variants' command
  local flags views
  flags=$(variant_flags "$1")
  views=$(sed 's/.*--augment \([0-9]*\).*/\1/' <<<"$flags")
  # shellcheck disable=SC2086
  python train_gen.py --tok_ckpt "$TOK" --tokens "$ROOT/tokens_k$views.npz" --val_tokens "$ROOT/val_tokens.npz" \
    --out_dir "$2" $SHARED $flags
}
mkdir -p "$ROOT"
encode_tokens 2
encode_tokens 8

run_variants 'variant ' "$ROOT/" train_variant "${variants[@]}"

python - "$ROOT" "${variants[@]}" <<'EOF'
import json, os, sys
root, variants = sys.argv[1], sys.argv[2:]
rows = []
for v in variants:
    path = os.path.join(root, v, 'log.jsonl')
    if not os.path.exists(path):
        continue
    evals = [r for r in map(json.loads, open(path)) if 'val_nll' in r]
    best = min(evals, key=lambda r: r['val_nll'])
    rows.append(dict(variant=v, best_step=best['step'], best_val_nll=best['val_nll'], train_nll_at_best=best['train_nll'],
                     ratio_at_best=best['val_over_train'], last_step=evals[-1]['step'], last_val_nll=evals[-1]['val_nll'],
                     last_train_nll=evals[-1]['train_nll']))
print(f"{'variant':<12} {'best step':>9} {'val NLL':>8} {'train NLL':>9} {'ratio':>6} | {'last val':>8} {'last train':>10}")
for r in rows:
    print(f"{r['variant']:<12} {r['best_step']:>9} {r['best_val_nll']:>8.2f} {r['train_nll_at_best']:>9.2f} "
          f"{r['ratio_at_best']:>6.3f} | {r['last_val_nll']:>8.2f} {r['last_train_nll']:>10.2f}")
json.dump(rows, open(os.path.join(root, 'summary.json'), 'w'), indent=1)
EOF
logs=(); for v in "${variants[@]}"; do [ -f "$ROOT/$v/log.jsonl" ] && logs+=("$ROOT/$v/log.jsonl"); done
[ ${#logs[@]} -gt 0 ] && python plot.py "${logs[@]}" --keys val_nll --out "$ROOT/val_nll.png" --title 'validation NLL per sequence (nats)'
exit $failed
