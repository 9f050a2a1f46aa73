"""
Super-resolution by spectral completion (SpectralAR sec. 4.4, Table 3 top), in the paper's order: images at the
tokenizer's size S to 2S, the generator adding the fine tokens of upsampled half-size sub-images.

    python superres.py --ckpt GEN --input out/samples/samples_10000x16x16x3.npz --out out/superres --fid_ref STATS
    python superres.py --ckpt GEN --input ../shared/data/cifar10/test --downsample --out out/superres_test

Each S x S image is split into 4 sub-images of S/2 x S/2, (a, b) = 00, 01, 10, 11:
  stride  polyphase: sub-image (a, b) holds the pixels (2y + a, 2x + b), the whole scene at half resolution
  patch   quadrants: sub-image (a, b) holds rows a S/2.. and columns b S/2.., a quarter of the scene
Each sub-image is upsampled to S x S (bicubic) onto the pixels it fills in the 2S x 2S output and encoded; it keeps
its first k tokens (--keep, several values: one output each) and the generator samples the other N - k with those
as a forced prefix, conditioned on the image's class (sample.py's --cfg / --top_k ... flags). The decoded
sub-images are reassembled: patch puts sub-image (a, b) in quadrant (a, b) of the output, stride interleaves them
as its polyphase components (a, b). k = N is the tokenizer alone; '<split>_upsampled' reassembles the upsampled
sub-images as they are, without the tokenizer: what the split loses by itself; 'plain' is the image upsampled 2x
(bicubic).
--keep_input_band: each output but plain keeps the input's own spectrum, the DCT coefficients below S on both axes,
and takes only those above S from the completion, so that the sub-images' reconstruction errors no longer change
what the input already shows (docs/superres.md measures both).
--input: an ADM .npz (arr_0 uint8 (n, S, S, 3), labels (n,) as sample.py writes; no labels: the null class), or
an image folder (<class>/<image> files, center-cropped to S; class ids by sorted folder name, which must be the
generator's classes; no class folders: the null class).
--downsample: --input holds 2S px originals instead; each is box-downsampled to S as the trainers' loader does,
super-resolved back to 2S and scored against its original.
Writes to --out:
  superres_{plain | stride_upsampled | patch_upsampled | stride_k{k} | patch_k{k}}_{n}x{2S}x{2S}x3.npz  ADM format,
                     with the labels
  side_by_side.png   the first --show images (rows): plain | stride_upsampled | patch_upsampled | stride k | patch k
                     | ... for each k (| the original)
  superres.json      the settings; per output the PSNR of its box-downsampled images against the inputs (does it
                     still show the input?), with --downsample its PSNR and LPIPS against the originals and its
                     squared error split into the input's DCT band and the band above (error_by_band), with
                     --fid_ref (any fid.py REF) its FID against that
Reproducibility: batch b of each output samples from a generator seeded by (--seed, b). docs/superres.md gives the
CIFAR-10 protocol, 16 -> 32 px against the real 32 px images.
"""
import argparse
import json
import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import common
import dct
import sample
from data import ImageFolder, center_crop_arr, load_npz, save_grid, to_float, to_uint8
from losses import LPIPS

MODES = ('plain', 'stride', 'patch')
PARTS = ((0, 0), (0, 1), (1, 0), (1, 1))  # the sub-images (a, b) of an image, in the order of split


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=common.HelpFormatter)
    sample.add_model_args(parser)
    parser.add_argument('--input', required=True, help='ADM .npz of S x S images (e.g. sample.py output) or an image folder')
    parser.add_argument('--downsample', action='store_true',
                        help='--input holds 2S px originals: super-resolve their box-downsampled S px versions and score '
                             'the outputs against them (PSNR, LPIPS)')
    parser.add_argument('--out', default='out/superres', help='output folder')
    parser.add_argument('--modes', nargs='+', choices=MODES, default=list(MODES))
    parser.add_argument('--keep', type=int, nargs='+', help='k, tokens kept of each sub-image (several: one output each; '
                        'default: the tokens whose cut-off w_i is at most S/2, the band an upsampled sub-image holds)')
    parser.add_argument('--shared_noise', action='store_true',
                        help="sample the four sub-images of an image from the same random numbers (default: independent)")
    parser.add_argument('--keep_input_band', action='store_true',
                        help="outputs but plain keep the input's DCT coefficients below S (both axes) and take only those "
                             "above from the completion (default: all from the completion)")
    sample.add_sampling_args(parser)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--batch_size', type=int, default=256, help='images per batch (4 sub-images each)')
    parser.add_argument('--limit', type=int, help='use only the first n images of --input')
    parser.add_argument('--show', type=int, default=8, help='rows of side_by_side.png')
    parser.add_argument('--fid_ref', help='fid.py REF (folder, .npz of images or statistics) to score every output against')
    parser.add_argument('--inception', help="fid.py's --inception weights")
    parser.add_argument('--lpips_path', help="--downsample's LPIPS weights (default: search, see losses.py)")
    return parser.parse_args(argv)


def upsample(images, shifts=None):
    """Images in [-1, 1] (B, C, h, w) -> (B, C, 2h, 2w), bicubic, kept in [-1, 1]. Without shifts the output pixels
    are F.interpolate's (align_corners=False: four inside each input pixel); shifts (B, 2) moves each image's output
    pixels by (y, x) input pixels."""
    B, _, h, w = images.shape
    shifts = torch.zeros(B, 2) if shifts is None else shifts
    # grid_sample's coordinates (align_corners=False): -1 and 1 are the outer edges of the border pixels; its bicubic
    # kernel and border clamping are F.interpolate's
    ys = ((torch.arange(2 * h) + 0.5)[None] + 2 * shifts[:, :1]) / h - 1  # (B, 2h)
    xs = ((torch.arange(2 * w) + 0.5)[None] + 2 * shifts[:, 1:]) / w - 1
    grid = torch.stack((xs[:, None, :].expand(-1, 2 * h, -1), ys[:, :, None].expand(-1, -1, 2 * w)), dim=-1)
    return F.grid_sample(images, grid.to(images), mode='bicubic', padding_mode='border', align_corners=False).clamp(-1, 1)


def part_shifts(mode):
    """(4, 2): how far the output pixels that sub-image (a, b) fills lie from its usual 2x grid, in its own pixels.
    A quadrant's usual grid is its part of the output's. Polyphase sub-image a holds the pixels 2y + a (pixel i
    spanning i..i+1); on its usual grid its pixel u would sit at u + a, so the four would sample the same points and
    interleaving them would show each twice. It fills output pixel 2u + a, centred at u + a/2 + 1/4: 1/4 - a/2 input
    pixels away, 1/8 - a/4 of its own."""
    if mode == 'patch':
        return torch.zeros(len(PARTS), 2)
    return torch.tensor([[1 / 8 - a / 4, 1 / 8 - b / 4] for a, b in PARTS])


def split(images, mode):
    """(B, C, H, W) -> the 4 sub-images (B * 4, C, H/2, W/2) of each image, in the order of PARTS."""
    B, C, H, W = images.shape
    if mode == 'stride':  # pixel (2y + a, 2x + b) -> sub-image (a, b), pixel (y, x)
        subs = images.view(B, C, H // 2, 2, W // 2, 2).permute(0, 3, 5, 1, 2, 4)
    elif mode == 'patch':  # pixel (a H/2 + y, b W/2 + x) -> sub-image (a, b), pixel (y, x)
        subs = images.view(B, C, 2, H // 2, 2, W // 2).permute(0, 2, 4, 1, 3, 5)
    else:
        raise ValueError(f'unknown split {mode!r}: use stride or patch')
    return subs.reshape(B * 4, C, H // 2, W // 2)


def merge(subs, mode):
    """The inverse of split: (B * 4, C, h, w) -> (B, C, 2h, 2w)."""
    n, C, h, w = subs.shape
    subs = subs.view(n // 4, 2, 2, C, h, w)
    if mode == 'stride':
        images = subs.permute(0, 3, 4, 1, 5, 2)  # (B, C, y, a, x, b)
    elif mode == 'patch':
        images = subs.permute(0, 3, 1, 4, 2, 5)  # (B, C, a, y, b, x)
    else:
        raise ValueError(f'unknown split {mode!r}: use stride or patch')
    return images.reshape(n // 4, C, 2 * h, 2 * w)


def with_input_band(out, images):
    """out (B, C, 2S, 2S) with its orthonormal DCT coefficients below S on both axes replaced by those of images
    (B, C, S, S), times 2: the 2S px image with the input's spectrum and nothing above it is the input upsampled in
    the DCT domain (a constant keeps its value: its DC coefficient grows with the side, S to 2S). The coefficients
    above S stay out's."""
    S = images.shape[-1]
    spectrum = dct.dct2(out.float())
    spectrum[..., :S, :S] = 2 * dct.dct2(images.float())
    return dct.idct2(spectrum).clamp(-1, 1)


def upsampled_parts(images, mode):
    """The sub-images (B * 4, C, S, S) of images (B, C, S, S) by `mode`, each upsampled 2x onto the output pixels it
    fills: what the tokenizer encodes."""
    return upsample(split(images, mode), part_shifts(mode).repeat(len(images), 1))


def reassemble(subs, images, mode, keep_input_band=False):
    """The 2S px outputs of the 2x sub-images subs (B * 4, C, S, S) of images (B, C, S, S): merged by `mode`, and with
    keep_input_band their DCT band below S the input's (with_input_band)."""
    out = merge(subs, mode)
    return with_input_band(out, images) if keep_input_band else out


@torch.no_grad()
def complete(gpt, tok, images, labels, keep, mode, generator=None, shared_noise=False, bf16=False,
             keep_input_band=False, **sampling):
    """Spectral completion of images in [-1, 1] (B, 3, S, S) with class labels (B,) to (B, 3, 2S, 2S): split by `mode`
    into sub-images of S/2, upsample each onto the output pixels it fills, encode them (float32), keep their first
    `keep` tokens, sample the rest (GPT.generate with the kept tokens as a forced prefix; `sampling`: its cfg_scale,
    cfg_ramp, temperature, top_k, top_p), decode and merge. keep = N gives the upsampled sub-images' reconstructions.
    shared_noise: each image's four sub-images are sampled from the same random numbers, generator's state at the
    start. keep_input_band: the merged output's DCT band below S is the input's (with_input_band)."""
    if shared_noise and generator is None:
        raise ValueError('shared_noise needs a generator, whose state each sub-image starts from')
    codes = tok.encode(upsampled_parts(images, mode)).view(len(images), len(PARTS), -1)
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16):
        if keep < codes.shape[2]:
            start = generator.get_state() if shared_noise else None
            for part in range(len(PARTS)):  # one call per part: with shared noise, row i (image i) of each draws alike
                if shared_noise:
                    generator.set_state(start)
                codes[:, part] = gpt.generate(labels, prefix=codes[:, part, :keep], generator=generator, **sampling)
        subs = tok.decode(codes.flatten(0, 1)).float()
    return reassemble(subs, images, mode, keep_input_band)


def box_downsample(images):
    """uint8 (n, 2S, 2S, 3) -> (n, S, S, 3) by 2x2 box means, through the trainers' loader (data.center_crop_arr):
    the S px images the models learned are made the same way, rounding included."""
    return np.stack([center_crop_arr(Image.fromarray(image), image.shape[0] // 2) for image in images])


def load_inputs(path, size, generator_classes, size_rule):
    """-> (uint8 images (n, size, size, 3), class ids (n,), or None where the input has no labels)."""
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
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (size, size, 3) or not len(images):
        raise common.UserError(f"--input {path}: arr_0 is {images.dtype} {images.shape}, expected uint8 (n, {size}, {size}, 3) "
                               f"with n >= 1: {size_rule}")
    if labels is not None and labels.shape != (len(images),):
        raise common.UserError(f"--input {path}: labels of shape {labels.shape} for {len(images)} images: save one class id "
                               f"per image (as sample.py does), or leave labels out to complete with the null class")
    return images, labels


def error_by_band(a, b, S):
    """Mean squared error per pixel (uint8 scale) between two (n, 2S, 2S, 3) arrays, split by the error's orthonormal
    DCT into the band an S px input holds (coefficients below S on both axes) and the band above it, which
    super-resolution has to supply: (below, above), summing to the mean squared error. An error that alternates between
    an image's interleaved polyphase components lands almost all above."""
    error = dct.dct2(torch.from_numpy(a.astype(np.float64) - b.astype(np.float64)).permute(0, 3, 1, 2)) ** 2
    below = error[..., :S, :S].sum().item() / error.numel()
    return below, error.sum().item() / error.numel() - below


def psnr(a, b):
    """Mean PSNR (dB) between two uint8 image arrays of the same shape."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(1)
    return float(np.mean(10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-10))))


@torch.no_grad()
def mean_lpips(lpips, a, b, device, batch_size):
    """Mean LPIPS distance between two uint8 (n, H, W, 3) arrays, at their own size."""
    total = 0.0
    for start in range(0, len(a), batch_size):
        x, y = (to_float(torch.from_numpy(arr[start:start + batch_size]).permute(0, 3, 1, 2), device) for arr in (a, b))
        total += lpips(x, y).sum().item()
    return total / len(a)


def main(argv=None):
    args = parse_args(argv)
    common.check_flags(args, positive=('batch_size', 'limit'), non_negative=('show',))
    device, use_bf16 = sample.device_and_bf16(args)
    gpt, tok, ckpt = sample.load_models(args.ckpt, args.tok_ckpt, device, args.no_ema)
    N, S = gpt.config.n_tokens, tok.config.image_size
    sample.check_sampling_settings(gpt.config.vocab_size, args.cfg, args.temperature, args.top_k, args.top_p)
    keeps = args.keep or [int((tok.omegas <= S // 2).sum())]
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
    size_rule = ("twice the tokenizer's size, the originals (--downsample)" if args.downsample else
                 "the tokenizer's size, which super-resolution doubles (--downsample takes originals of twice it)")
    images, labels = load_inputs(args.input, 2 * S if args.downsample else S, ckpt.get('classes'), size_rule)
    images = images[:args.limit]
    originals, images = (images, box_downsample(images)) if args.downsample else (None, images)
    if args.downsample:  # as are missing LPIPS weights
        try:
            lpips = LPIPS(args.lpips_path).to(device)
        except FileNotFoundError as e:
            raise common.UserError(f"--downsample scores LPIPS: {e}") from None
    if labels is None:
        print(f"--input {args.input} has no labels: completing with the null class (unconditional)")
        labels = np.full(len(images), gpt.config.num_classes)
    elif len(labels) and not 0 <= labels.min() <= labels.max() < gpt.config.num_classes:
        raise common.UserError(f"--input {args.input}: labels {labels.min()}..{labels.max()} are not class ids of this "
                               f"generator, 0..{gpt.config.num_classes - 1}: pass the labels of its training classes, "
                               f"or leave labels out to complete with the null class")
    labels = labels[:len(images)].astype(np.int64)
    splits = [m for m in args.modes if m != 'plain']
    outputs = {'plain': ('plain', None)} if 'plain' in args.modes else {}  # name: (mode, tokens kept or None)
    outputs.update({f'{m}_upsampled': (m, None) for m in splits})
    outputs.update({f'{m}_k{k}': (m, k) for k in keeps for m in splits})
    results = {name: np.empty((len(images), 2 * S, 2 * S, 3), dtype=np.uint8) for name in outputs}
    print(f"{len(images)} images of {S} px -> {2 * S} px from {sample.describe_checkpoint(args.ckpt, ckpt)}: "
          f"{', '.join(outputs)}; cfg {args.cfg}, on {device}, bf16 {use_bf16}")

    with common.progress_bar(total=len(images), unit='img') as pbar:
        for batch, start in enumerate(range(0, len(images), args.batch_size)):
            x = to_float(torch.from_numpy(images[start:start + args.batch_size]).permute(0, 3, 1, 2), device)
            y = torch.from_numpy(labels[start:start + args.batch_size]).to(device)
            for name, (mode, k) in outputs.items():
                if mode == 'plain':
                    out = upsample(x)
                elif k is None:  # what the split loses by itself: no tokenizer, no generator
                    out = reassemble(upsampled_parts(x, mode), x, mode, args.keep_input_band)
                else:
                    out = complete(gpt, tok, x, y, k, mode, common.step_generator(args.seed, batch, device),
                                   args.shared_noise, use_bf16, args.keep_input_band, **sampling)
                results[name][start:start + len(x)] = to_uint8(out)
            pbar.update(len(x))

    report = {'args': vars(args), 'n': len(images), 'generator_step': ckpt['step'], 'tokenizer': tok.path,
              'n_tokens': N, 'outputs': {}}
    for name, arr in results.items():
        path = os.path.join(args.out, f'superres_{name}_{len(arr)}x{2 * S}x{2 * S}x3.npz')
        common.atomic_write(path, lambda f: np.savez(f, arr_0=arr, labels=labels))
        record = report['outputs'][name] = {'npz': path, 'psnr_downsampled_vs_input': psnr(box_downsample(arr), images)}
        if args.downsample:
            below, above = error_by_band(arr, originals, S)
            record.update(psnr_vs_original=psnr(arr, originals),
                          lpips_vs_original=mean_lpips(lpips, arr, originals, device, args.batch_size),
                          mse_below_S=below, mse_above_S=above)
    shown = min(args.show, len(images))
    columns = [results[name][:shown] for name in outputs] + ([originals[:shown]] if args.downsample else [])
    grid = torch.from_numpy(np.stack(columns, 1))  # (rows, columns, H, W, 3)
    save_grid(to_float(grid.flatten(0, 1).permute(0, 3, 1, 2), 'cpu'), os.path.join(args.out, 'side_by_side.png'),
              ncol=len(columns))
    if args.fid_ref:
        for name, record in report['outputs'].items():
            record['fid'] = fid.compute_metrics(evaluation.image_set(record['npz'], need_pool=False), ref, pr=False)[0]['fid']
        report['fid_ref'] = args.fid_ref
    common.atomic_write(os.path.join(args.out, 'superres.json'), lambda f: f.write(json.dumps(report, indent=1).encode()))
    for name, record in report['outputs'].items():
        print(f"{name:>14}: PSNR of the downsampled output vs the input {record['psnr_downsampled_vs_input']:.2f} dB"
              + (f", vs the original {record['psnr_vs_original']:.2f} dB, LPIPS {record['lpips_vs_original']:.4f}"
                 + f", squared error below / above S {record['mse_below_S']:.1f} / {record['mse_above_S']:.1f}"
                 if args.downsample else '') + (f", FID {record['fid']:.2f}" if 'fid' in record else ''))
    print(f"wrote {args.out}/superres_*.npz, side_by_side.png ({' | '.join([*outputs] + ['original'] * args.downsample)}) "
          f"and superres.json")


if __name__ == '__main__':
    common.exit_on_user_error()
    main()
