"""
Orthonormal 2D DCT-II, spectral low-pass, and the token -> frequency schedule w_i of SpectralAR.

dct2 / idct2 are two matrix products with a cached basis (built in float64, cast to the input's
dtype and device), so they run on any device, need no scipy and are exact to rounding.

    python dct.py --data ../shared/data/cifar10/train --n_tokens 32     # information per token of each schedule

prints, for each schedule at the folder's image size, the PSNR against the image of the low-pass target of the
prefixes N/8, N/4, N/2, 3N/4 (mean over --images images): how much of the image each share of the tokens must
describe. docs/results.md ("The schedule at 32 px") compares it with eq. (9) on ImageNet at 256 px.

    python dct.py --data ../shared/data/imagenet256-sample --size 256 --n_tokens 64 --images 1000 --fid nonuniform

adds, for one schedule, the FID of the low-pass targets of the prefixes N - k (k = N/8, N/4, 3N/8: Table 3's
truncations) against the images themselves: what a lossless tokenizer would lose in FID by its last k tokens.
"""
import argparse
import functools
import math

import torch


@functools.lru_cache(maxsize=32)
def _basis(n, dtype, device):
    # C[k, j] = a_k cos(pi (2j + 1) k / 2n): rows are the orthonormal DCT-II basis vectors
    k = torch.arange(n, dtype=torch.float64)[:, None]
    j = torch.arange(n, dtype=torch.float64)[None, :]
    c = torch.cos(math.pi * (2 * j + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    c[0] /= math.sqrt(2.0)
    return c.to(dtype=dtype, device=device)


def _compute_dtype(x):
    # low precision (bf16 under autocast) would ruin the transform; keep at least float32
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def dct2(x):
    """Orthonormal DCT-II over the last two dims of (..., H, W); same as scipy dctn(norm='ortho')."""
    dt = _compute_dtype(x)
    with torch.autocast(x.device.type, enabled=False):
        ch, cw = _basis(x.shape[-2], dt, x.device), _basis(x.shape[-1], dt, x.device)
        return (ch @ x.to(dt) @ cw.T).to(x.dtype)


def idct2(X):
    """Inverse of dct2 (the basis is orthonormal, so the inverse is the transpose)."""
    dt = _compute_dtype(X)
    with torch.autocast(X.device.type, enabled=False):
        ch, cw = _basis(X.shape[-2], dt, X.device), _basis(X.shape[-1], dt, X.device)
        return (ch.T @ X.to(dt) @ cw).to(X.dtype)


def _lowpass_projector(n, omega, dt, device):
    # P = C^T diag(k < omega) C projects a length-n signal onto its first omega DCT frequencies
    c = _basis(n, dt, device)
    keep = (torch.arange(n, device=device)[None, :] < omega[:, None]).to(dt)  # (B, n)
    return torch.einsum('kh,bk,kw->bhw', c, keep, c)


def lowpass(x, omega):
    """
    Keep the top-left omega x omega DCT coefficients of every channel and return the image.
    x: (B, C, H, W); omega: int, or LongTensor (B,) with one cut-off per sample.
    Done as P_H x P_W^T with projectors, which equals idct2(mask * dct2(x)) without forming the mask.
    """
    B, H, W = x.shape[0], x.shape[-2], x.shape[-1]
    omega = torch.as_tensor(omega, device=x.device).long().expand(B)
    dt = _compute_dtype(x)
    with torch.autocast(x.device.type, enabled=False):
        ph = _lowpass_projector(H, omega, dt, x.device)
        pw = ph if W == H else _lowpass_projector(W, omega, dt, x.device)
        out = ph[:, None] @ x.to(dt) @ pw[:, None].transpose(-1, -2)
    return out.to(x.dtype)


SCHEDULES = ("nonuniform", "nonuniform_shared", "nonuniform_psnr", "uniform")


def omega_schedule(n_tokens, size, kind="nonuniform"):
    """
    Frequency cut-off w_i (i = 1..N) that the first i tokens must reconstruct.

    "uniform":    w_i follows i * size / N (Table 4's ablation row).
    "nonuniform": the paper's eq. (9) generalised. Eq. (9) (N=64, 256 px) spends half the tokens on
                  w <= size/8, a quarter on size/8 < w <= size/4 and the last quarter on the rest,
                  with per-token increments 1, 2, 12. We keep those anchors as fractions of N and
                  size: the target curve is piecewise linear through
                  (0, 0), (N/2, size/8), (3N/4, size/4), (N, size),
                  which reproduces eq. (9) exactly and scales to other N and sizes
                  (e.g. 512 px, N=64: increments 2, 4, 24).

    Both curves are turned into integers the same way, keeping eq. (7): every increment
    d_i = w_i - w_{i-1} is >= 1 (each token adds frequencies) and non-decreasing, and w_N = size.
    d_i is the rounded target step, clamped to [d_{i-1}, mean of what is left]; the upper clamp
    guarantees the remaining tokens can still take steps >= d_i, so the last step ends at size.
    Where the target is flatter than one frequency per token (small images, many tokens, e.g.
    32 px with N=16: 1 x 8, 1 x 4, 5 x 4 -> 8, 12, 32), steps of 1 are used and the
    excess goes to the last quarter.

    More tokens than frequencies (N > size, e.g. N=64 at 32 px) cannot keep eq. (7): then runs of
    consecutive tokens share a cut-off, w_i = ceil(target(i)) clamped to [1, size] (uniform, N=64,
    32 px: 1, 1, 2, 2, ..., 32, 32), so later tokens of a run refine the same low-pass image.

    "nonuniform_shared": eq. (9)'s curve under that same rule for any N, so small images keep its
    proportions where steps >= 1 would flatten them: w_i = ceil(target(i)) never decreases, but its
    increments may be 0 where the curve is flatter than one frequency per token (32 px, N=32: w = 1 x 4,
    2 x 4, 3 x 4, 4 x 4, then 5, 5, 6, 6, 7, 7, 8, 8, then 11, 14, ..., 32; half the tokens on w <= 4).
    Where the anchors are whole numbers per token (N=64 at 256 px) it is eq. (9) exactly.

    "nonuniform_psnr": eq. (9)'s information per token for CIFAR-like 32 px images, the default of the small
    presets. Eq. (9) on ImageNet at 256 px gives its prefixes N/2 and 3N/4 the low-pass images of PSNR 22.6
    and 25.7 dB against the image; on CIFAR-10 those PSNRs are reached at w = 9S/32 and 13S/32, not at eq. (9)'s
    S/8 and S/4 (docs/results.md, "The schedule at 32 px"). The curve through those anchors, under the rule of
    "nonuniform_shared" (32 px, N=32: w = 1, 2, 2, 3, 3, 4, 4, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, ..., 13, 13,
    then 16, 18, 21, 23, 25, 28, 30, 32): pairs of tokens share a cut-off for the first three quarters.
    """
    if n_tokens < 1 or size < 1:
        raise ValueError(f"need n_tokens >= 1 and size >= 1, got n_tokens={n_tokens}, size={size}")
    if kind == "uniform":
        knots = [(0, 0), (n_tokens, size)]
    elif kind in ("nonuniform", "nonuniform_shared"):
        knots = [(0, 0), (n_tokens / 2, size / 8), (3 * n_tokens / 4, size / 4), (n_tokens, size)]
    elif kind == "nonuniform_psnr":
        knots = [(0, 0), (n_tokens / 2, 9 * size / 32), (3 * n_tokens / 4, 13 * size / 32), (n_tokens, size)]
    else:
        raise ValueError(f"unknown omega schedule {kind!r}: use one of {', '.join(SCHEDULES)}")

    def target(i):
        for (x0, y0), (x1, y1) in zip(knots, knots[1:]):
            if i <= x1:
                return y0 + (y1 - y0) * (i - x0) / (x1 - x0)
        return size

    if n_tokens > size or kind in ("nonuniform_shared", "nonuniform_psnr"):  # a departure from eq. (7): increments of 0 inside each run
        return [min(size, max(1, math.ceil(target(i) - 1e-9))) for i in range(1, n_tokens + 1)]
    omegas, w, step = [], 0, 1
    for i in range(1, n_tokens + 1):
        most = (size - w) // (n_tokens - i + 1)
        step = min(max(round(target(i)) - w, step), most)
        w += step
        omegas.append(w)
    return omegas


def lowpass_psnr(images, omegas):
    """Mean PSNR (dB, images in [-1, 1]) of lowpass(image, w) against the image, for each w in omegas."""
    psnr = []
    for w in omegas:
        mse = (lowpass(images, w) - images).pow(2).mean((1, 2, 3)).clamp(min=1e-10)
        psnr.append((10 * torch.log10(4 / mse)).mean().item())
    return psnr


def main(argv=None):
    from data import ImageFolder, readable_samples, to_float  # only the command line reads images
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--data', required=True, help='image folder (<class>/<image> files)')
    parser.add_argument('--size', type=int, default=32, help='images are centre-cropped and resized to this')
    parser.add_argument('--n_tokens', type=int, default=32)
    parser.add_argument('--images', type=int, default=3000, help='images spread evenly over the folder')
    parser.add_argument('--fid', choices=SCHEDULES, help="also the FID, against the images, of this schedule's low-pass "
                        'targets at the prefixes N - k, k = N/8, N/4, 3N/8 (Inception features on the GPU if there is one)')
    parser.add_argument('--inception', help="with --fid: fid.py's --inception (default: the installed weights)")
    args = parser.parse_args(argv)
    images = to_float(torch.stack([x for x, _ in readable_samples(ImageFolder(args.data, args.size), args.images)]), 'cpu')
    prefixes = [max(1, args.n_tokens * k // 8) for k in (1, 2, 4, 6)]
    print(f"PSNR (dB) of lowpass(image, w_i) against the image, {len(images)} images of {args.data} at {args.size} px")
    print(f"{'schedule':<18} " + ' '.join(f"{f'i={i}':>12}" for i in prefixes) + '   (w_i in brackets)')
    for kind in SCHEDULES:
        omegas = [omega_schedule(args.n_tokens, args.size, kind)[i - 1] for i in prefixes]
        cells = [f"{p:6.2f} ({w:>3})" for p, w in zip(lowpass_psnr(images, omegas), omegas)]
        print(f"{kind:<18} " + ' '.join(f"{c:>12}" for c in cells))
    if args.fid:
        print_truncation_fid(images, args.n_tokens, args.size, args.fid, args.inception)


def print_truncation_fid(images, n_tokens, size, kind, inception):
    import fid
    from data import to_uint8
    evaluation = fid.Evaluation(inception, 'cuda' if torch.cuda.is_available() else 'cpu')

    def statistics(batch):
        return fid.statistics(fid.compute_features(to_uint8(batch), evaluation.model)['pool'])
    reference = statistics(images)
    omegas = omega_schedule(n_tokens, size, kind)
    print(f"FID against the same {len(images)} images of lowpass(image, w_(N-k)), {kind}; FID's bias at this image count "
          f"makes it a comparison between truncations and data sets of equal counts, not an absolute figure")
    for k in (n_tokens // 8, n_tokens // 4, 3 * n_tokens // 8):
        w = omegas[n_tokens - k - 1]
        print(f"k = {k:>2} (prefix {n_tokens - k}, w = {w:>3} of {size}): FID "
              f"{fid.frechet_distance(*statistics(lowpass(images, w)), *reference):.2f}", flush=True)


if __name__ == '__main__':
    main()
