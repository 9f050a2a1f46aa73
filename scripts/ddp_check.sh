#!/usr/bin/env bash
# Multi-GPU check of train_gen.py: one process vs torchrun on $GPUS GPUs at the same global batch (the loss curves
# must agree), and one process at the per-GPU batch (weak scaling: DDP images/s / (GPUS x that)). The tokenizer is
# trained for one step only: this measures speed and DDP correctness, not sample quality.
#   DATA=../shared/data/imagenet256-sample OUT=out/ddp_check bash scripts/ddp_check.sh
set -euo pipefail
DATA=${DATA:-../shared/data/imagenet256-sample}
OUT=${OUT:-out/ddp_check}
GPUS=${GPUS:-2}
PER_GPU=${PER_GPU:-256}                     # batch per GPU; the DDP run's global batch is GPUS x PER_GPU
STEPS=${STEPS:-120}
PRESET=${PRESET:-d16}
TOK_PRESET=${TOK_PRESET:-titok_b64}
COMPILE=${COMPILE---compile}
ONE_GPU=${CUDA_VISIBLE_DEVICES:-0} ONE_GPU=${ONE_GPU%%,*}  # the one-GPU runs' GPU: the first of those given
mkdir -p "$OUT"
python train_tok.py --preset "$TOK_PRESET" --data "$DATA" --out_dir "$OUT/tok" --batch_size 8 --max_steps 1 --warmup 1 \
  --lpips_weight 0 --log_every 1 --sample_every 0 --ckpt_every 1
python train_gen.py --preset "$PRESET" --tok_ckpt "$OUT/tok/ckpt.pt" --data "$DATA" --out_dir "$OUT/tokens" --encode_only
run=(train_gen.py --preset "$PRESET" --tok_ckpt "$OUT/tok/ckpt.pt" --tokens "$OUT/tokens/tokens.npz" --max_steps "$STEPS"
     --warmup 10 --log_every 20 --sample_every 0 --ckpt_every 1000000 $COMPILE)
CUDA_VISIBLE_DEVICES=$ONE_GPU python "${run[@]}" --batch_size $((PER_GPU * GPUS)) --out_dir "$OUT/one_gpu_global_batch"
CUDA_VISIBLE_DEVICES=$ONE_GPU python "${run[@]}" --batch_size "$PER_GPU" --out_dir "$OUT/one_gpu_per_gpu_batch"
torchrun --standalone --nproc_per_node "$GPUS" "${run[@]}" --batch_size $((PER_GPU * GPUS)) --out_dir "$OUT/ddp"
python - "$OUT" "$GPUS" <<'PY'
import json, sys
out, gpus = sys.argv[1], int(sys.argv[2])
logs = {k: [r for r in map(json.loads, open(f'{out}/{k}/log.jsonl')) if 'loss' in r]  # training records, not evaluations
        for k in ('one_gpu_global_batch', 'one_gpu_per_gpu_batch', 'ddp')}
print('step  loss 1 GPU  loss DDP  (same global batch)')
for a, b in zip(logs['one_gpu_global_batch'], logs['ddp']):
    print(f"{a['step']:4d}  {a['loss']:10.4f}  {b['loss']:8.4f}")
rate = {k: sum(r['images_per_s'] for r in v[1:]) / max(len(v) - 1, 1) for k, v in logs.items()}  # first interval compiles
print(f"images/s (after the first log interval): 1 GPU {rate['one_gpu_global_batch']:.0f} at the global batch, "
      f"{rate['one_gpu_per_gpu_batch']:.0f} at the per-GPU batch; DDP on {gpus} GPUs {rate['ddp']:.0f}")
print(f"scaling efficiency: {rate['ddp'] / gpus / rate['one_gpu_per_gpu_batch']:.1%} at the same per-GPU batch, "
      f"{rate['ddp'] / gpus / rate['one_gpu_global_batch']:.1%} at the same global batch")
PY
