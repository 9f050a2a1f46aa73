#!/usr/bin/env bash
# Several tokens per step at CIFAR-10 scale (the paper's d16-p4 row): generators with P = 1, 2, 4 tokens per step
# trained at one budget on the same token files, then each one's best validation NLL (CIFAR-10 test/, nats per
# sequence), gFID-50k of its best.pt against the train statistics, and the images/s of sample.py's loop (comparable
# between P only when the runs did not share a GPU: with fewer GPUs than P values they sample at the same time).
#   TOK=out/cifar10/tok/ckpt.pt DATA=../shared/data/cifar10 ROOT=out/tokens_per_step bash scripts/tokens_per_step.sh
# Model j trains on GPU j mod GPUS; each writes $ROOT/p<P>/ (log.jsonl, best.pt, run.log, samples/), and last
# $ROOT/summary.json and a table.
set -euo pipefail
TOK=${TOK:?set TOK to a tokenizer checkpoint}
DATA=${DATA:-../shared/data/cifar10}
ROOT=${ROOT:-out/tokens_per_step}
PS=${PS:-1 2 4}
STEPS=${STEPS:-3000}  # validation NLL is lowest by step 2,000-2,500 on this tokenizer (docs/results.md): 6,000 adds time only
WORKERS=${WORKERS:-4}
VIEWS=${VIEWS:-8}  # views per training image in the token file (flips and zoom crops), as scripts/cifar10.sh's gen stage
# the rest of the generator recipe it was measured with (cifar_d8 and its dropout and drop path 0.1, EMA)
FLAGS=${FLAGS:---preset cifar_d8 --ema 0.9995 --batch_size 512 --lr 2e-4 --log_every 200 --eval_every 500 --ckpt_every 2000 --sample_every 0 --compile}
SAMPLING=${SAMPLING:---cfg 2.0}  # the best setting of that recipe's sweep for P = 1 (docs/results.md, generalisation)
TRAIN=$DATA/train HELD_OUT=$DATA/test  # final figures, as scripts/cifar10.sh's without SELECT (encode_tokens reads them)
source "$(dirname "$0")/run_variants.sh"
[ -n "${INCEPTION:-}" ] && WEIGHTS_FID=(--inception "$INCEPTION") || WEIGHTS_FID=()
STATS=${STATS:-$ROOT/cifar10_train_stats.npz}
mkdir -p "$ROOT"
[ -f "$STATS" ] || python fid.py --no-pr --save-stats "$STATS" "$DATA/train" "${WEIGHTS_FID[@]}"
encode_tokens "$VIEWS"
read -ra ps <<<"$PS"
train_sample_score() {  # train_sample_score P DIR: run_variants' command
  # shellcheck disable=SC2086
  python train_gen.py --tok_ckpt "$TOK" --tokens "$ROOT/tokens_k$VIEWS.npz" --val_tokens "$ROOT/val_tokens.npz" --out_dir "$2" \
      --augment "$VIEWS" --max_steps "$STEPS" --tokens_per_step "$1" $FLAGS &&
    python sample.py --ckpt "$2/best.pt" --classes all --per_class 5000 --batch_size 1000 --seed 0 $SAMPLING \
      --out "$2/samples" &&
    python fid.py "$2/samples/samples_50000x32x32x3.npz" "$STATS" --no-pr --json "$2/samples/fid.json" "${WEIGHTS_FID[@]}"
}
run_variants 'P = ' "$ROOT/p" train_sample_score "${ps[@]}"
python - "$ROOT" "${ps[@]}" <<'PY'
import json, sys
root, ps = sys.argv[1], sys.argv[2:]
rows = []
for p in ps:
    evals = [r for r in map(json.loads, open(f'{root}/p{p}/log.jsonl')) if 'val_nll' in r]
    best = min(evals, key=lambda r: r['val_nll'])
    fid = json.load(open(f'{root}/p{p}/samples/fid.json'))
    sampling = json.load(open(f'{root}/p{p}/samples/sample_args.json'))
    rows.append({'tokens_per_step': int(p), 'best_val_nll': best['val_nll'], 'best_step': best['step'],
                 'train_nll_at_best': best['train_nll'], 'gfid_50k': fid['fid'], 'sfid_50k': fid.get('sfid'),
                 'sample_images_per_s': sampling['images_per_s']})
json.dump(rows, open(f'{root}/summary.json', 'w'), indent=1)
print(f"{'P':>2} {'val NLL':>9} {'(step)':>7} {'train NLL':>10} {'gFID-50k':>9} {'sample img/s':>13}")
for r in rows:
    print(f"{r['tokens_per_step']:>2} {r['best_val_nll']:9.2f} {r['best_step']:7d} {r['train_nll_at_best']:10.2f} "
          f"{r['gfid_50k']:9.2f} {r['sample_images_per_s']:13.0f}")
PY
exit $failed
