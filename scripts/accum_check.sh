#!/usr/bin/env bash
# --grad_accum and elastic resume on GPUs, for the tokenizer and the generator: one GPU with --grad_accum 2 against
# two GPUs without it at the same global batch (the loss curves must agree up to float summation order), and the
# two-GPU run's checkpoint at STEPS / 2 resumed on one GPU with --grad_accum 2 (it must continue the same curve).
#   DATA=../shared/data/imagenet256-sample OUT=out/accum_check bash scripts/accum_check.sh
# CPU smoke run: DEVICE=cpu TOK_PRESET=tiny PRESET=tiny TOK_BATCH=8 GEN_BATCH=8 STEPS=4 COMPILE= LPIPS=0 WORKERS=0
set -euo pipefail
DATA=${DATA:-../shared/data/imagenet256-sample}
OUT=${OUT:-out/accum_check}
STEPS=${STEPS:-200}
HALF=$((STEPS / 2))
TOK_PRESET=${TOK_PRESET:-titok_b64}
TOK_BATCH=${TOK_BATCH:-64}
PRESET=${PRESET:-d16}
GEN_BATCH=${GEN_BATCH:-512}
COMPILE=${COMPILE---compile}
LPIPS=${LPIPS:-1}
WORKERS=${WORKERS:-8}
DEVICE=${DEVICE:-auto}
ONE_GPU=${CUDA_VISIBLE_DEVICES:-0} ONE_GPU=${ONE_GPU%%,*}  # the one-GPU runs' GPU: the first of those given
mkdir -p "$OUT"

one() { CUDA_VISIBLE_DEVICES=$ONE_GPU python "$@" --grad_accum 2; }
two() { torchrun --standalone --nproc_per_node 2 "$@"; }
check() {  # $1: train_tok.py or train_gen.py, $2: the run's folder prefix, then the run's flags
  local script=$1 name=$2; shift 2
  one "$script" "$@" --out_dir "$OUT/${name}_1gpu_accum2"
  two "$script" "$@" --out_dir "$OUT/${name}_2gpu" --keep 2
  one "$script" "$@" --out_dir "$OUT/${name}_moved" --resume "$(printf '%s/%s_2gpu/ckpt_%07d.pt' "$OUT" "$name" "$HALF")"
}
common=(--max_steps "$STEPS" --ckpt_every "$HALF" --log_every $(((HALF + 9) / 10)) --sample_every 0 --workers "$WORKERS"
        --device "$DEVICE" $COMPILE)
check train_tok.py tok --preset "$TOK_PRESET" --data "$DATA" --batch_size "$TOK_BATCH" --warmup $((STEPS / 10)) \
  --disc_start $((STEPS / 4)) --lpips_weight "$LPIPS" "${common[@]}"
python train_gen.py --preset "$PRESET" --tok_ckpt "$OUT/tok_2gpu/ckpt.pt" --data "$DATA" --out_dir "$OUT/tokens" \
  --workers "$WORKERS" --device "$DEVICE" --encode_only
check train_gen.py gen --preset "$PRESET" --tok_ckpt "$OUT/tok_2gpu/ckpt.pt" --tokens "$OUT/tokens/tokens.npz" \
  --batch_size "$GEN_BATCH" --eval_every 0 "${common[@]}"
python - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
for name, key in (('tok', 'l2'), ('gen', 'loss')):
    runs = ('1gpu_accum2', '2gpu', 'moved')
    logs = {r: {x['step']: x for x in map(json.loads, open(f'{out}/{name}_{r}/log.jsonl')) if key in x} for r in runs}
    print(f"{name}: {key} per step   1 GPU x --grad_accum 2 | 2 GPUs | 2 GPUs, then 1 GPU x --grad_accum 2 from step "
          f"{min(logs['moved'])}")
    for step, a in logs['1gpu_accum2'].items():
        b, c = logs['2gpu'].get(step), logs['moved'].get(step)
        print(f"{step:6d}  {a[key]:.5f}  {b[key] if b else float('nan'):.5f}  {c[key] if c else float('nan'):.5f}  "
              f"images/s {a['images_per_s']:.0f} / {b['images_per_s'] if b else float('nan'):.0f}")
PY
