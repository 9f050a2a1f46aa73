"""
Super-resolution by spectral completion (SpectralAR sec. 4.4, Table 3 top): images at the tokenizer's size S
to 2S, by letting the generator add the fine tokens of 2x-upsampled images.

    python superres.py --ckpt out/cifar10/gen/ckpt.pt --input out/samples/samples_10000x32x32x3.npz --out out/superres \
        --keep 16 24 28 --fid_ref ref64/superres_plain_50000x64x64x3.npz

Each image (uint8, S x S) is upsampled 2x (bicubic: the 'plain' output) and split into 4 sub-images of S x S:
  stride  polyphase: sub-image (a, b) holds the pixels (2y + a, 2x + b) of the upsampled image
  patch   quadrants: sub-image (a, b) holds rows aS..aS+S-1 and columns bS..bS+S-1
Each sub-image is encoded, keeps its first k tokens (--keep, several values: one output each), and the
generator samples the other N - k with those as a forced prefix, conditioned on the image's class (sample.py's
--cfg / --top_k ... flags); the 4 decoded sub-images are put back in place. docs/superres.md gives the CIFAR-10
protocol and what it can show.
--input: an ADM .npz (arr_0 uint8 (n, S, S, 3), labels (n,) as sample.py writes; no labels: the null class), or
an image folder (<class>/<image> files, center-cropped to S; class ids by sorted folder name, which must be the
generator's classes; no class folders: the null class).
Writes to --out:
  superres_{plain | stride_k{k} | patch_k{k}}_{n}x{2S}x{2S}x3.npz  ADM format, with the labels
  side_by_side.png   the first --show images (rows): plain | stride k | patch k | ... for each k
  superres.json      the settings; per output the PSNR of its 2x box-downsampled images against the inputs
                     (do they still show the input?) and, with --fid_ref (any fid.py REF), the FID against it
Reproducibility: batch b of each output samples from a generator seeded by (--seed, b).
"""
import argparse
import json
import os

import numpy as np
import torch
import torch.nn.functional as F

import common
import sample
from data import ImageFolder, load_npz, save_grid, to_float, to_uint8

MODES = ('plain', 'stride', 'patch')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=common.HelpFormatter)
    sample.add_model_args(parser)
    parser.add_argument('--input', required=True, help='ADM .npz of S x S images (e.g. sample.py output) or an image folder')
    parser.add_argument('--out', default='out/superres', help='output folder')
    parser.add_argument('--modes', nargs='+', choices=MODES, default=list(MODES))
    parser.add_argument('--keep', type=int, nargs='+', help='k, tokens kept of each sub-image (several: one output each; '
                        'default 7N/8, the lowest FID measured on CIFAR-10: docs/superres.md)')
    sample.add_sampling_args(parser)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--batch_size', type=int, default=256, help='images per batch (4 sub-images each)')
    parser.add_argument('--limit', type=int, help='use only the first n images of --input')
    parser.add_argument('--show', type=int, default=8, help='rows of side_by_side.png')
    parser.add_argument('--fid_ref', help='fid.py REF (folder, .npz of images or statistics) to score every output against')
    parser.add_argument('--inception', help="fid.py's --inception weights")
    return parser.parse_args(argv)


def upsample(images):
    """Images in [-1, 1] (B, 3, S, S) -> (B, 3, 2S, 2S), bicubic (the 'plain' baseline), kept in [-1, 1]."""
    return F.interpolate(images, scale_factor=2, mode='bicubic', align_corners=False).clamp(-1, 1)


def split(images, mode):
    """(B, C, 2S, 2S) -> the 4 sub-images (B * 4, C, S, S) of each image, in the order (a, b) = 00, 01, 10, 11."""
    B, C, H, W = images.shape
    if mode == 'stride':  # pixel (2y + a, 2x + b) -> sub-image (a, b), pixel (y, x)
        subs = images.view(B, C, H // 2, 2, W // 2, 2).permute(0, 3, 5, 1, 2, 4)
    elif mode == 'patch':  # pixel (aS + y, bS + x) -> sub-image (a, b), pixel (y, x)
        subs = images.view(B, C, 2, H // 2, 2, W // 2).permute(0, 2, 4, 1, 3, 5)
    else:
        raise ValueError(f'unknown split {mode!r}: use stride or patch')
    return subs.reshape(B * 4, C, H // 2, W // 2)


def merge(subs, mode):
    """The inverse of split: (B * 4, C, S, S) -> (B, C, 2S, 2S)."""
    n, C, S, _ = subs.shape
    subs = subs.view(n // 4, 2, 2, C, S, S)
    if mode == 'stride':
        images = subs.permute(0, 3, 4, 1, 5, 2)  # (B, C, y, a, x, b)
    elif mode == 'patch':
        images = subs.permute(0, 3, 1, 4, 2, 5)  # (B, C, a, y, b, x)
    else:
        raise ValueError(f'unknown split {mode!r}: use stride or patch')
    return images.reshape(n // 4, C, 2 * S, 2 * S)


@torch.no_grad()
def complete(gpt, tok, images, labels, keep, mode, generator=None, bf16=False, **sampling):
    """Spectral completion of images in [-1, 1] (B, 3, S, S) with class labels (B,) to (B, 3, 2S, 2S): upsample,
    split by `mode`, encode the sub-images (float32), keep their first `keep` tokens, sample the rest (GPT.generate
    with the kept tokens as a forced prefix; `sampling`: its cfg_scale, cfg_ramp, temperature, top_k, top_p),
    decode and merge. keep = N gives the sub-images' own reconstructions."""
    device = images.device
    codes = tok.encode(split(upsample(images), mode))
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        if keep < codes.shape[1]:
            codes = gpt.generate(labels.repeat_interleave(4), prefix=codes[:, :keep], generator=generator, **sampling)
        return merge(tok.decode(codes).float(), mode)


def load_inputs(path, size, generator_classes):
    """-> (uint8 images (n, S, S, 3), class ids (n,), or None where the input has no labels)."""
    if os.path.isdir(path):
        folder = ImageFolder(path, size)
        if folder.classes and generator_classes and folder.classes != list(generator_classes):
            raise common.UserError(f"--input {path}: its class folders {folder.classes[:5]}... are not the generator's "
                                   f"classes {list(generator_classes)[:5]}...: give a folder with the training data's class "
                                   "folders, or one without class folders (completed as the null class)")
        items = [folder[i] for i in range(len(folder))]
        bad = sum(item is None for item in items)
        if bad:
            print(f"--input {path}: skipped {bad} unreadable file(s)")
        images = np.stack([item[0].permute(1, 2, 0).numpy() for item in items if item is not None])
        labels = np.array([item[1] for item in items if item is not None]) if folder.classes else None
        return images, labels
    if not os.path.isfile(path):
        raise common.UserError(f"--input {path!r} does not exist: pass an .npz written by sample.py or an image folder")
    arrays = load_npz(path)
    if 'arr_0' not in arrays:
        raise common.UserError(f"--input {path}: no arr_0 in this .npz: pass one written by sample.py (ADM format)")
    images, labels = arrays['arr_0'], arrays.get('labels')
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (size, size, 3):
        raise common.UserError(f"--input {path}: arr_0 is {images.dtype} {images.shape}, expected uint8 (n, {size}, {size}, 3): "
                               f"the tokenizer's size, which super-resolution doubles")
    if labels is not None and labels.shape != (len(images),):
        raise common.UserError(f"--input {path}: labels of shape {labels.shape} for {len(images)} images: save one class id "
                               f"per image (as sample.py does), or leave labels out to complete with the null class")
    return images, labels


def psnr(a, b):
    """Mean PSNR (dB) between two uint8 image arrays of the same shape."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(1)
    return float(np.mean(10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-10))))


def main(argv=None):
    args = parse_args(argv)
    common.check_flags(args, positive=('batch_size', 'limit'), non_negative=('show',))
    device, use_bf16 = sample.device_and_bf16(args)
    gpt, tok, ckpt = sample.load_models(args.ckpt, args.tok_ckpt, device, args.no_ema)
    N, S = gpt.config.n_tokens, tok.config.image_size
    sample.check_sampling_settings(gpt.config.vocab_size, args.cfg, args.temperature, args.top_k, args.top_p)
    keeps = args.keep or [N - N // 8]
    if any(not 1 <= k <= N for k in keeps):
        raise common.UserError(f"--keep {' '.join(map(str, keeps))}: each k must be in 1..N={N} (N keeps each sub-image's "
                               f"own tokens)")
    common.check_writable(args.out, '--out')  # before the work, whose outputs it would otherwise lose at the end
    if args.fid_ref:  # a bad reference or missing Inception weights stop before the work too
        import fid
        evaluation = fid.Evaluation(args.inception, device)
        ref = evaluation.image_set(args.fid_ref, need_pool=False)
        evaluation.model  # a statistics file as --fid_ref has not loaded the weights yet
    sampling = dict(cfg_scale=args.cfg, cfg_ramp=args.cfg_ramp, temperature=args.temperature, top_k=args.top_k,
                    top_p=args.top_p)
    images, labels = load_inputs(args.input, S, ckpt.get('classes'))
    images = images[:args.limit]
    if labels is None:
        print(f"--input {args.input} has no labels: completing with the null class (unconditional)")
        labels = np.full(len(images), gpt.config.num_classes)
    elif len(labels) and not 0 <= labels.min() <= labels.max() < gpt.config.num_classes:
        raise common.UserError(f"--input {args.input}: labels {labels.min()}..{labels.max()} are not class ids of this "
                               f"generator, 0..{gpt.config.num_classes - 1}: pass the labels of its training classes, "
                               f"or leave labels out to complete with the null class")
    labels = labels[:len(images)].astype(np.int64)
    outputs = ['plain'] * ('plain' in args.modes) + [f'{m}_k{k}' for k in keeps for m in args.modes if m != 'plain']
    results = {name: np.empty((len(images), 2 * S, 2 * S, 3), dtype=np.uint8) for name in outputs}
    print(f"{len(images)} images of {S} px -> {2 * S} px from {sample.describe_checkpoint(args.ckpt, ckpt)}: "
          f"{', '.join(outputs)}; cfg {args.cfg}, on {device}, bf16 {use_bf16}")

    with common.progress_bar(total=len(images), unit='img') as pbar:
        for batch, start in enumerate(range(0, len(images), args.batch_size)):
            x = to_float(torch.from_numpy(images[start:start + args.batch_size]).permute(0, 3, 1, 2), device)
            y = torch.from_numpy(labels[start:start + args.batch_size]).to(device)
            for name in outputs:
                if name == 'plain':
                    out = upsample(x)
                else:
                    mode, k = name.split('_k')
                    out = complete(gpt, tok, x, y, int(k), mode, common.step_generator(args.seed, batch, device),
                                   use_bf16, **sampling)
                results[name][start:start + len(x)] = to_uint8(out)
            pbar.update(len(x))

    report = {'args': vars(args), 'n': len(images), 'generator_step': ckpt['step'], 'tokenizer': tok.path,
              'n_tokens': N, 'outputs': {}}
    for name, arr in results.items():
        path = os.path.join(args.out, f'superres_{name}_{len(arr)}x{2 * S}x{2 * S}x3.npz')
        common.atomic_write(path, lambda f: np.savez(f, arr_0=arr, labels=labels))
        downsampled = F.avg_pool2d(torch.from_numpy(arr).permute(0, 3, 1, 2).float(), 2).round().byte()
        report['outputs'][name] = {'npz': path, 'psnr_downsampled_vs_input': psnr(downsampled.permute(0, 2, 3, 1).numpy(), images)}
    shown = min(args.show, len(images))
    columns = torch.stack([torch.from_numpy(results[name][:shown]) for name in outputs], 1)  # (rows, columns, H, W, 3)
    save_grid(to_float(columns.flatten(0, 1).permute(0, 3, 1, 2), 'cpu'), os.path.join(args.out, 'side_by_side.png'),
              ncol=len(outputs))
    if args.fid_ref:
        for name, record in report['outputs'].items():
            record['fid'] = fid.compute_metrics(evaluation.image_set(record['npz'], need_pool=False), ref, pr=False)[0]['fid']
        report['fid_ref'] = args.fid_ref
    common.atomic_write(os.path.join(args.out, 'superres.json'), lambda f: f.write(json.dumps(report, indent=1).encode()))
    for name, record in report['outputs'].items():
        print(f"{name:>14}: PSNR of the 2x-downsampled output vs the input {record['psnr_downsampled_vs_input']:.2f} dB"
              + (f", FID {record['fid']:.2f}" if 'fid' in record else ''))
    print(f"wrote {args.out}/superres_*.npz, side_by_side.png ({' | '.join(outputs)}) and superres.json")


if __name__ == '__main__':
    common.exit_on_user_error()
    main()
