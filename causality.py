"""
Proof of concept of SpectralAR, section 4.2 / Table 1: how well is each token predicted by the ones before it?

A 32x32 image is cut into four tokens by three paradigms:
  raster:     the four 16x16 patches in raster order (top-left, top-right, bottom-left, bottom-right)
  scale-wise: the image downsampled to 8, 16, 24, 32 px with antialiased bilinear interpolation
              (F.interpolate(mode="bilinear", antialias=True)); the 32 px token is the image itself
  spectral:   the DCT low-pass images dct.lowpass(x, w) for w = 8, 16, 24, 32 (32x32 each; w=32 is the image)

R2_avg(t_i; t_1..t_{i-1}) (eq. 10) is the mean, over the elements (pixel-channels) of t_i, of the largest
squared Pearson correlation, taken across images, with any element of t_1..t_{i-1}. High values mean the
earlier tokens already determine the next one, i.e. the order is "causal" in the paper's sense.

python causality.py /path/to/cifar10/test [--json out.json] [--max-images N]
The source is a folder of images (searched recursively; any size: center-cropped and resized to 32 px
with PIL bicubic) or an .npz whose arr_0 is uint8 NHWC.
"""
import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import common
from data import UNREADABLE_IMAGE_ERRORS, find_images, load_npz, load_rgb
from dct import lowpass

PAPER_TABLE1 = {  # Huang et al. 2025, Table 1 (CIFAR-100 validation), i = 2, 3, 4
    "raster": [0.471, 0.366, 0.525],
    "scale-wise": [0.889, 0.953, 0.943],
    "spectral": [0.916, 0.977, 0.994],
}
SCALE_DOWNSAMPLING = "antialiased bilinear (F.interpolate, antialias=True)"
IMAGE_SIZE = 32
# R2_avg is a maximum over thousands of correlations across the images, which chance alone inflates for few
# images: on uniform noise raster's R2 is 1.000 at 3 images, 0.35 at 30, 0.11 at 100, 0.04 at 300 (paper: 0.47)
MIN_IMAGES = 100


def to_rgb32(image):
    """Any PIL image -> (32, 32, 3) uint8: RGB, center square crop, bicubic resize."""
    image = image.convert("RGB")
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.crop((left, top, left + side, top + side))
    if side != IMAGE_SIZE:
        image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC)
    return np.asarray(image)


def pick(count, max_images):
    # an evenly spread subset, so a class-sorted folder keeps every class
    if max_images is None or max_images >= count:
        return np.arange(count)
    return np.linspace(0, count - 1, max_images).round().astype(int)


def load_images(source, max_images=None):
    """Folder of images or .npz (arr_0, uint8 NHWC) -> float64 tensor (N, 3, 32, 32) in [0, 1]."""
    if source.endswith(".npz"):
        arrays = load_npz(source)
        if "arr_0" not in arrays:
            raise common.UserError(f"{source}: no arr_0 in this .npz: save the images as arr_0, uint8 (N, H, W, 3)")
        array = arrays["arr_0"]
        if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] not in (1, 3):
            raise common.UserError(f"{source}: arr_0 must be uint8 images (N, H, W, 3), got {array.dtype} {array.shape}"
                             + ("; an NCHW array becomes NHWC with arr.transpose(0, 2, 3, 1)" if array.ndim == 4 and array.shape[1] == 3 else ""))
        array = array[pick(len(array), max_images)]
        if array.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
            array = np.stack([to_rgb32(Image.fromarray(a.squeeze())) for a in array])
    else:
        paths = find_images(source)
        if not paths:
            raise common.UserError(f"no images found under {source}")
        images, unreadable = [], 0
        for index in pick(len(paths), max_images):
            try:
                images.append(to_rgb32(load_rgb(paths[index], transparent_to_white=False)))
            except UNREADABLE_IMAGE_ERRORS:
                unreadable += 1
        if unreadable:
            print(f"skipped {unreadable} unreadable files")
        if not images:
            raise common.UserError(f"none of the {len(paths)} image files under {source} could be read")
        array = np.stack(images)
    return torch.from_numpy(array).permute(0, 3, 1, 2).to(torch.float64) / 255.0


def make_tokens(images, paradigm):
    """(N, 3, 32, 32) -> the four tokens of one paradigm, each (N, C, h, w)."""
    half = IMAGE_SIZE // 2
    if paradigm == "raster":
        return [images[:, :, top:top + half, left:left + half] for top in (0, half) for left in (0, half)]
    if paradigm == "scale-wise":
        # at s = 32 this is the identity, so the last token is exactly the image
        return [F.interpolate(images, size=(s, s), mode="bilinear", antialias=True, align_corners=False)
                for s in (8, 16, 24, 32)]
    if paradigm == "spectral":
        return [lowpass(images, w) for w in (8, 16, 24, 32)]
    raise ValueError(f"unknown paradigm {paradigm!r}")


def standardise(token):
    """(N, ...) -> (N, D) float64 columns with mean 0 and norm 1, so z_a^T z_b is Pearson's r.
    Constant columns become 0 (their correlation is undefined; we count it as 0)."""
    flat = token.reshape(len(token), -1).to(torch.float64)
    centred = flat - flat.mean(0)
    norm = centred.norm(dim=0)
    return centred / torch.where(norm > 0, norm, torch.ones_like(norm))


def r2_avg(token, earlier_tokens, chunk=4096):
    """Eq. 10: mean over the elements of token of max r^2 with any element of earlier_tokens."""
    current = standardise(token)
    best = torch.zeros(current.shape[1], dtype=torch.float64)
    for earlier in earlier_tokens:
        earlier = standardise(earlier)
        for start in range(0, earlier.shape[1], chunk):  # bounds the (D_i, chunk) correlation block
            correlation = current.T @ earlier[:, start:start + chunk]
            best = torch.maximum(best, correlation.square().amax(1))
    return best.mean().item()


def causality_table(images):
    """{paradigm: [R2_avg for i = 2, 3, 4]}"""
    table = {}
    for paradigm in PAPER_TABLE1:
        tokens = make_tokens(images, paradigm)
        table[paradigm] = [r2_avg(tokens[i], tokens[:i]) for i in range(1, len(tokens))]
    return table


def format_table(table, n_images, source):
    lines = [f"R2_avg(t_i; t_1..t_(i-1)), eq. 10, on {n_images} images from {source}",
             f"scale-wise downsampling: {SCALE_DOWNSAMPLING}; spectral tokens: DCT low-pass, w = 8, 16, 24, 32",
             f"{'paradigm':<12}{'ours i=2':>9}{'i=3':>7}{'i=4':>7}   {'paper i=2':>9}{'i=3':>7}{'i=4':>7}  (CIFAR-100 val)"]
    for paradigm, ours in table.items():
        paper = PAPER_TABLE1[paradigm]
        lines.append(f"{paradigm:<12}{ours[0]:>9.3f}{ours[1]:>7.3f}{ours[2]:>7.3f}   "
                     f"{paper[0]:>9.3f}{paper[1]:>7.3f}{paper[2]:>7.3f}")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description="Table 1 of SpectralAR: R2_avg causality of raster, scale-wise and spectral tokens")
    parser.add_argument("source", help="folder of images (recursive), e.g. cifar10/test, or .npz with arr_0 uint8 NHWC")
    parser.add_argument("--max-images", type=int, default=None, help="evenly spaced subset of this many images")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args()
    if args.max_images is not None and args.max_images < MIN_IMAGES:
        raise common.UserError(f"--max-images {args.max_images}: R2_avg needs at least {MIN_IMAGES} images (the paper "
                               f"used 10,000): pass {MIN_IMAGES} or more, or leave --max-images out to use them all")
    if args.json:
        common.check_writable_file(args.json, '--json')

    start = time.time()
    images = load_images(args.source, args.max_images)
    if len(images) < MIN_IMAGES:
        raise common.UserError(f"{len(images)} readable image(s): R2_avg needs at least {MIN_IMAGES} (the paper used 10,000); "
                               f"with fewer, chance correlations dominate it (3 images give 1.000 everywhere)")
    table = causality_table(images)
    seconds = time.time() - start
    print(format_table(table, len(images), args.source))
    print(f"took {seconds:.1f} s")
    if args.json:
        report = {"source": args.source, "n_images": len(images), "scale_downsampling": SCALE_DOWNSAMPLING,
                  "spectral_omegas": [8, 16, 24, 32], "r2_avg_i2_i3_i4": table,
                  "paper_cifar100_val": PAPER_TABLE1, "seconds": round(seconds, 1)}
        common.atomic_write(args.json, lambda f: f.write(json.dumps(report, indent=2).encode()))


if __name__ == "__main__":
    common.exit_on_user_error()
    main()
