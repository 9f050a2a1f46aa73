#!/usr/bin/env bash
# Table 4 on CIFAR-10: one budget for every row (the campaign's: 5,000 tokenizer and 2,000 generator steps, 11-13
# minutes a row alone on an H100, so that two rows nearly fill the 30-minute hold of a lent GPU; at the pilot
# budget of 1,500 steps every tokenizer stopped above rFID 100, results/table4_1500/), each on scripts/cifar10.sh's
# tokenizer recipe (TOK_RECIPE) and generator recipe, N = 32 tokens per image.
#   DATA=../shared/data/cifar10 ROOT=out/table4 bash scripts/table4.sh [row ...]
# Rows (train_tok.py --ablation; each adds one ingredient to the row before):
#   titok       full attention among patches and latents, all N tokens rebuild the full image
#   spectral    + spectral supervision (prefix i rebuilds lowpass(image, w_i), w_i uniform)
#   causal      + the spectral causal mask (encoder and decoder)
#   full        + the non-uniform mapping (the cifar preset's nonuniform_psnr): SpectralAR
#   full_alg1   full trained by Algorithm 1 as written: TOK_RECIPE without --full_prefix_prob / --gan_full_only
#   alg1_full_prefix, alg1_gan_full_only   full_alg1 with one of the two departures back: which of them is worth
#               full's lead over full_alg1 (not in the default rows)
#   titok_s1, full_s1   titok and full again with seed 1 (tokenizer and generator): the run-to-run noise
# Every row's generator samples with the same settings and seed: CFG swept per row over SWEEP_CFGS on the held-out
# seed 1 (SWEEP_PER_CLASS x 10 samples each), then 50k samples at the best CFG with seed 0 against the training
# statistics (gFID), and the 50k training images reconstructed against the same statistics (rFID-train, the
# rfid_train stage). The full row also runs Table 3 (cifar10.sh's truncate stage, at its best CFG). Row j runs on GPU
# j mod GPUS, one row at a time on each GPU (RUNS_PER_GPU=1; see below), each writing $ROOT/<row>/run.log, so a
# lost machine costs the rows in progress only. A row whose gFID is written is not run again and keeps its log, so
# a rerun after a lost machine trains only the unfinished rows, and a rerun over finished rows only writes the
# summary.
# SUMMARY_ONLY=1: no training or sampling, only the summary of what the rows have written so far (a row whose machine
# was lost shows its finished stages and '-' for the others).
# Last: $ROOT/summary.json, $ROOT/noise.json (titok - full, each the mean of its seeds, and each configuration's
# |seed 0 - seed 1|: a difference counts once it exceeds that spread), $ROOT/nll_per_position.png (validation NLL
# per position at each row's best.pt), $ROOT/psnr_per_prefix.png (each tokenizer's PSNR against the image at every
# prefix) and a table.
set -euo pipefail
ROOT=${ROOT:-out/table4}
source "$(dirname "$0")/run_variants.sh"
export STATS=${STATS:-$ROOT/cifar10_train_stats.npz} TOK_STEPS=${TOK_STEPS:-5000} GEN_STEPS=${GEN_STEPS:-2000}
export WORKERS=${WORKERS:-12} SWEEP_CFGS=${SWEEP_CFGS:-1 1.25 1.5 2 3 4} SWEEP_TEMPS=${SWEEP_TEMPS:-1.0} SWEEP_TOPKS=0 SWEEP_TOPPS=0
export SWEEP_PER_CLASS=${SWEEP_PER_CLASS:-300}
COMPILE=${COMPILE---compile}  # COMPILE= for a CPU dry run
# Two tokenizers sharing an H200 train about a fifth faster than one after the other, sharing an H100 no faster
# (docs/results.md, the search commands), and two rows sharing an H100 took 60-95 s per sweep setting of 3,000
# samples, where a run alone took 20 s per setting of 10,000 (results/cifar10_base_tok/): the sampler is a chain of
# small kernels, each waiting for its turn on a shared GPU, so the sweep, gFID and Table 3 cost more than the
# sharing saves
export RUNS_PER_GPU=${RUNS_PER_GPU:-1}
# cifar10.sh's tokenizer recipe when the campaign began, pinned here: rows run at different times share it even
# after a search changes cifar10.sh's default
RECIPE=${TOK_RECIPE---full_prefix_prob 0.5 --gan_full_only --lpips_resize 128 --codebook_size 4096}
export GEN_PRESET=${GEN_PRESET:-cifar_d8} GEN_DROPOUT=${GEN_DROPOUT:-0.1}  # its generator recipe, pinned likewise
ALG1_RECIPE=${ALG1_RECIPE---lpips_resize 128 --codebook_size 4096}  # the same without the two departures
rows=("$@"); [ ${#rows[@]} -eq 0 ] && rows=(titok spectral causal full full_alg1 titok_s1 full_s1)

row_settings() {  # "ABLATION SEED RECIPE" of row $1
  case $1 in
    titok|spectral|causal|full) echo "$1 0 $RECIPE" ;;
    titok_s1|full_s1) echo "${1%_s1} 1 $RECIPE" ;;
    full_alg1) echo "full 0 $ALG1_RECIPE" ;;
    alg1_full_prefix) echo "full 0 $ALG1_RECIPE --full_prefix_prob 0.5" ;;
    alg1_gan_full_only) echo "full 0 $ALG1_RECIPE --gan_full_only" ;;
    *) echo "unknown row $1: use titok spectral causal full full_alg1 titok_s1 full_s1 alg1_full_prefix" \
         "alg1_gan_full_only" >&2; exit 2 ;;
  esac
}
check_variants row_settings "${rows[@]}"

run_row() {  # run_row NAME DIR: run_variants' command
  local ablation seed recipe
  read -r ablation seed recipe <<<"$(row_settings "$1")"
  local stages=(tok rfid_train gen sweep sample fid)
  [ "$1" = full ] && stages+=(truncate)  # Table 3 on the full row: drop the last 0, N/8, N/4, 3N/8 tokens
  # best.pt by the validation NLL on test and the sweep's best setting: the campaign's protocol since its first row
  OUT=$2 GEN_CKPT=$2/gen/best.pt SEED=$seed TOK_RECIPE="$recipe" TOK_FLAGS="$COMPILE --ablation $ablation" \
    bash "$(dirname "$0")/cifar10.sh" "${stages[@]}"
}
failed=0
if [ -n "${SUMMARY_ONLY:-}" ]; then
  [ -d "$ROOT" ] || { echo "SUMMARY_ONLY: no folder $ROOT; set ROOT to the rows' folder" >&2; exit 2; }
else
  pending_variants 'row ' "$ROOT/" samples/fid.json "${rows[@]}"  # a row is finished once its gFID is written
  [ ${#pending[@]} -eq 0 ] || OUT=$ROOT bash "$(dirname "$0")/cifar10.sh" stats
  run_variants 'row ' "$ROOT/" run_row "${pending[@]}"
fi

plot_rows() {  # plot_rows LOG FLAG PNG TITLE: plot.py FLAG over the rows' $ROOT/<row>/LOG that exist, into $ROOT/PNG
  local logs=() row
  for row in "${rows[@]}"; do [ -f "$ROOT/$row/$1" ] && logs+=("$ROOT/$row/$1"); done
  [ ${#logs[@]} -eq 0 ] || python plot.py "${logs[@]}" "$2" --out "$ROOT/$3" --title "$4"
}
plot_rows gen/log.jsonl --per_position nll_per_position.png 'validation NLL per position at best.pt (nats)'
plot_rows tok/eval.jsonl --per_prefix psnr_per_prefix.png 'PSNR against the image at every prefix, held-out images (dB)'
python - "$ROOT" "${rows[@]}" <<'EOF'
import json, os, sys
root, rows = sys.argv[1], sys.argv[2:]


def read(path, last=False):
    if not os.path.exists(path):
        return None
    if path.endswith('.jsonl'):
        records = [json.loads(line) for line in open(path)]
        return records[-1] if last else records
    return json.load(open(path))


table = []
for row in rows:
    d = os.path.join(root, row)
    tok, tok_train, gfid = read(f'{d}/tok/rfid.json'), read(f'{d}/tok_train/rfid.json'), read(f'{d}/samples/fid.json')
    evaluation, gen_log = read(f'{d}/tok/eval.jsonl', last=True), read(f'{d}/gen/log.jsonl')
    sweep, args, truncation = (read(f'{d}/{p}') for p in ('sweep/sweep.json', 'samples/sample_args.json',
                                                           'truncate/truncate.json'))
    evals = [r for r in gen_log or [] if 'val_nll' in r]
    best = min(evals, key=lambda r: r['val_nll']) if evals else None
    table.append(dict(
        row=row, rfid_test=tok and tok['fid'], rfid_train=tok_train and tok_train['fid'], gfid=gfid and gfid['fid'],
        gfid_minus_rfid_train=gfid and tok_train and gfid['fid'] - tok_train['fid'],
        precision=gfid and gfid.get('precision'), recall=gfid and gfid.get('recall'),
        rfid_train_precision=tok_train and tok_train.get('precision'), rfid_train_recall=tok_train and tok_train.get('recall'),
        psnr_at_N=evaluation and evaluation['psnr_vs_image_at_N'],
        psnr_vs_lowpass_at=evaluation and evaluation['psnr_vs_lowpass_at'],
        codebook_used=evaluation and evaluation['codebook_used'],
        code_perplexity_per_position=evaluation and [p.get('code_perplexity') for p in evaluation['prefixes']],
        best_val_nll=best and best['val_nll'], train_nll_at_best=best and best['train_nll'], best_step=best and best['step'],
        sweep_fid_by_cfg=sweep and {str(r['cfg']): r['fid'] for r in sweep['rows']},
        sweep_samples=sweep and sweep['n'],
        cfg=args and args['cfg'], copied_share=args and args.get('copied_share'),
        truncation_fid=truncation and {str(r['truncate']): r['fid'] for r in truncation['rows']},
        truncation_samples=truncation and truncation['n'],
        stage_seconds={r['stage']: r['seconds'] for r in read(f'{d}/stage_seconds.jsonl') or []}))
json.dump(table, open(os.path.join(root, 'summary.json'), 'w'), indent=1)
f = lambda v, spec: format('-', '>' + spec.split('.')[0].rstrip('%f')) if v is None else format(v, spec)
width = max(len(r['row']) for r in table + [dict(row='row')])
print(f"{'row':<{width}} {'rFID-test':>9} {'rFID-train':>10} {'sweep FID':>9} {'gFID-50k':>8} {'g-r':>6} {'CFG':>4} {'val NLL':>8} "
      f"{'PSNR@N':>6} {'vs low-pass @1/2/4/8':>23} {'codes':>6}")
for r in table:
    lowpass = '/'.join(f'{v:.2f}' for v in r['psnr_vs_lowpass_at'].values()) if r['psnr_vs_lowpass_at'] else '-'
    best_sweep = min(r['sweep_fid_by_cfg'].values()) if r['sweep_fid_by_cfg'] else None
    print(f"{r['row']:<{width}} {f(r['rfid_test'], '9.2f')} {f(r['rfid_train'], '10.2f')} {f(best_sweep, '9.2f')} {f(r['gfid'], '8.2f')} "
          f"{f(r['gfid_minus_rfid_train'], '6.2f')} {f(r['cfg'], '4')} {f(r['best_val_nll'], '8.2f')} "
          f"{f(r['psnr_at_N'], '6.2f')} {lowpass:>23} {f(r['codebook_used'], '6.1%')}")
for r in table:
    if r['stage_seconds']:
        stages = r['stage_seconds']
        print(f"{r['row']}: {sum(stages.values()) / 60:.1f} minutes (" + ', '.join(f'{k} {v / 60:.1f}' for k, v in stages.items()) + ')')
# Run-to-run noise: |seed 0 - seed 1| of a configuration trained twice, against which titok - full is judged
noise_metrics = {'rfid_train': 'rFID-train', 'gfid': 'gFID', 'gfid_minus_rfid_train': 'g-r', 'best_val_nll': 'val NLL'}
by_row = {r['row']: r for r in table}


def seeds(base, metric):
    return [by_row[row][metric] for row in (base, f'{base}_s1') if row in by_row and by_row[row][metric] is not None]


spread = {base: {m: abs(v[0] - v[1]) for m in noise_metrics if len(v := seeds(base, m)) == 2} for base in ('titok', 'full')}
gap = {m: sum(seeds('titok', m)) / len(seeds('titok', m)) - sum(seeds('full', m)) / len(seeds('full', m))
       for m in noise_metrics if seeds('titok', m) and seeds('full', m)}
json.dump(dict(seed_spread=spread, titok_minus_full=gap), open(os.path.join(root, 'noise.json'), 'w'), indent=1)
if gap:
    print('titok - full (each the mean of its seeds): ' + ', '.join(f'{noise_metrics[m]} {v:+.2f}' for m, v in gap.items()))
for base, values in spread.items():
    if values:
        print(f'{base}, |seed 0 - seed 1|: ' + ', '.join(f'{noise_metrics[m]} {v:.2f}' for m, v in values.items()))
for r in table:
    if r['truncation_fid']:
        print(f"{r['row']}, Table 3 (FID of {r['truncation_samples']} samples decoded from the first N - k tokens): "
              + ', '.join(f'k = {k}: {v:.2f}' for k, v in r['truncation_fid'].items()))
EOF
exit $failed
