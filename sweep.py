"""
Sweep a generator's sampling settings by FID in one process: the generator, tokenizer, Inception network and
reference statistics load once, then every point of the grid (the product of the values given) is sampled and scored.

    python sweep.py --ckpt out/gen/ckpt.pt --ref out/cifar10_train_stats.npz --cfg 0 0.5 1 1.5 2 3 --cfg_ramp off on \\
        --temperature 1.0 0.9 --top_k 0 100 --json out/sweep/sweep.json --best_flags out/sweep/best_flags
    python sample.py --ckpt out/gen/ckpt.pt $(cat out/sweep/best_flags) --per_class 5000 --out samples   # final
    python sweep.py --ckpt out/gen/ckpt.pt --ref out/cifar10_train_stats.npz --truncate 0 4 8 12      # Table 3

--ref: statistics written by `fid.py --save-stats` (or a folder of images, whose features are computed first).
Every setting samples --per_class images of each class with the same --seed (default 1, held out from sample.py's
default 0: the final samples then score a setting on images it was not picked on) and prints a table line.
--cfg_ramp off on: constant and ramped guidance are both points of the grid (bare --cfg_ramp: ramped only).
--best_flags: the sample.py flags of the lowest-FID setting (with --cfg_ramp when it ramps, --no_ema when the sweep had it).
--truncate k (decode from the first N - k tokens) is an ablation, not a way to sample: rows with k > 0 compete for
the best only when every row truncates.
"""
import argparse
import itertools
import json
import time

import numpy as np

import common
import fid
import sample
import tokens


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=common.HelpFormatter)
    sample.add_model_args(parser)
    parser.add_argument('--ref', required=True, help='reference: statistics .npz from fid.py --save-stats, or images')
    parser.add_argument('--inception', metavar='PATH', help='Inception weights (default: found as fid.py finds them)')
    parser.add_argument('--resize', choices=['tf1', 'pytorch'], default='tf1', help="as fid.py's --resize")
    sample.add_sampling_args(parser, several=True)
    parser.add_argument('--truncate', type=int, nargs='+', default=[0], help='drop the last k tokens (Table 3)')
    parser.add_argument('--classes', default='all', help="'all', or class names or ids like cat,dog or 3,5 (FID wants all)")
    parser.add_argument('--per_class', type=int, default=1000, help='samples per class and setting')
    parser.add_argument('--batch_size', type=int, default=1000)
    parser.add_argument('--seed', type=int, default=1, help="held out from sample.py's default seed 0")
    parser.add_argument('--json', metavar='OUT', help='write every row and the best as JSON')
    parser.add_argument('--best_flags', metavar='OUT', help="write the best row's sample.py flags as one line")
    args = parser.parse_args(argv)
    args.cfg_ramp = [value == 'on' for value in args.cfg_ramp] or [True]  # a bare --cfg_ramp: on
    return args


def score(images, inception, device, resize, ref):
    """FID (and sFID where the reference has spatial statistics) of uint8 NHWC images against the reference, and the
    seconds the Inception features took."""
    features = fid.compute_features(images, inception, device, resize)
    scores = dict(fid=fid.frechet_distance(*fid.statistics(features['pool']), ref['mu'], ref['sigma']), sfid=None,
                  inception_seconds=features['seconds'])
    if ref['mu_s'] is not None:
        scores['sfid'] = fid.frechet_distance(*fid.statistics(features['spatial']), ref['mu_s'], ref['sigma_s'])
    return scores


def best_row(rows):
    """The lowest-FID row; truncated rows only when every row truncates (they are an ablation, not a setting)."""
    return min([row for row in rows if row['truncate'] == 0] or rows, key=lambda row: row['fid'])


def sample_flags(row, no_ema):
    """sample.py's flags for the setting of `row`, with the weights every row was sampled with."""
    return (f"--cfg {row['cfg']} --temperature {row['temperature']} --top_k {row['top_k']} --top_p {row['top_p']}"
            + (' --cfg_ramp' if row['cfg_ramp'] else '') + (' --no_ema' if no_ema else ''))


def write(path, text):
    common.atomic_write(path, lambda f: f.write(text.encode()))


def sweep(args):
    for flag, path in (('--json', args.json), ('--best_flags', args.best_flags)):
        if path:  # before the samples and their FIDs, which the writes come after
            common.check_writable_file(path, flag)
    device, use_bf16 = sample.device_and_bf16(args)
    gpt, tok, ckpt = sample.load_models(args.ckpt, args.tok_ckpt, device, args.no_ema)
    N = gpt.config.n_tokens
    sample.check_settings(args, N, gpt.config.vocab_size)
    classes = sample.parse_classes(args.classes, sample.generator_classes(ckpt, gpt.config.num_classes))
    labels = np.repeat(np.array(classes, dtype=np.int64), args.per_class)
    evaluation = fid.Evaluation(args.inception, device, args.resize)
    ref = evaluation.image_set(args.ref, need_pool=False)
    inception = evaluation.model  # a stats --ref has not loaded it: missing weights should stop us before sampling

    grid = list(itertools.product(args.cfg, args.cfg_ramp, args.temperature, args.top_k, args.top_p, args.truncate))
    print(f"{len(grid)} setting(s) x {len(labels)} samples ({len(classes)} classes x {args.per_class}, seed {args.seed}) "
          f"from {sample.describe_checkpoint(args.ckpt, ckpt)} with {tok.path}, on {device}, bf16 {use_bf16}", flush=True)
    train_codes = tokens.training_codes(ckpt.get('tokens'))
    print(f"{'cfg':>6} {'ramp':>4} {'temp':>6} {'top_k':>6} {'top_p':>6} {'trunc':>6} {'FID':>9} {'sFID':>9} {'copy@4':>7} "
          f"{'copy@8':>7} {'copy@N':>7} {'s':>7}")
    rows = []
    for cfg_scale, cfg_ramp, temperature, top_k, top_p, truncate in grid:
        start_time = time.perf_counter()
        batches = sample.sample_batches(gpt, tok, labels, args.batch_size, args.seed, N - truncate, cfg_scale, cfg_ramp,
                                        temperature, top_k, top_p, use_bf16)
        codes, images = zip(*[(batch_codes.cpu().numpy(), batch_images) for _, batch_codes, batch_images in batches])
        images = np.concatenate(images)
        sampling_seconds = time.perf_counter() - start_time  # the batches are sampled and decoded as they are read
        copied = (tokens.copied_shares(np.concatenate(codes), train_codes, (4, 8, N)) if train_codes is not None else {})
        row = dict(cfg=cfg_scale, cfg_ramp=cfg_ramp, temperature=temperature, top_k=top_k, top_p=top_p, truncate=truncate,
                   **score(images, inception, device, args.resize, ref),
                   copied_share={str(k): v for k, v in copied.items()}, sampling_seconds=sampling_seconds,
                   seconds=time.perf_counter() - start_time)
        rows.append(row)
        sfid = '-' if row['sfid'] is None else f"{row['sfid']:.3f}"
        shares = ' '.join(f"{100 * copied[k]:>6.2f}%" if k in copied else f"{'-':>7}" for k in (4, 8, N))
        print(f"{cfg_scale:>6g} {'on' if cfg_ramp else 'off':>4} {temperature:>6g} {top_k:>6d} {top_p:>6g} {truncate:>6d} "
              f"{row['fid']:>9.3f} {sfid:>9} {shares} {row['seconds']:>7.1f}", flush=True)

    best = best_row(rows)
    flags = sample_flags(best, args.no_ema)
    print(f"best: FID {best['fid']:.3f}" + (f" (decoding {N - best['truncate']}/{N} tokens)" if best['truncate'] else '')
          + f" with {flags}")
    if args.json:
        write(args.json, json.dumps(dict(rows=rows, best=best, best_flags=flags, args=vars(args), n=len(labels),
                                         generator_step=ckpt['step'], generator_val_nll=ckpt.get('val_nll'),
                                         tokenizer=tok.path, device=str(device),
                                         bf16=use_bf16, inception_weights=inception.weights_path), indent=1))
    if args.best_flags:
        write(args.best_flags, flags + '\n')


def main(argv=None):
    sweep(parse_args(argv))


if __name__ == '__main__':
    common.exit_on_user_error()
    main()
