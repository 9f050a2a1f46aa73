"""What cuDNN autotuning costs the Inception passes of fid.py: autotuning times every convolution's algorithms on
the first batch of each shape. This runs, in a fresh process per setting, three passes over random uint8 images
(3,000, 3,000 again, then 50,000) with autotuning on and off (fid.py's setting), and prints the seconds of each
pass: the first pass's extra cost against the later passes' speed. On one H100 (results/fid/first_pass.log) it cost
12.6 s on the first pass and saved 1.5 s per 50,000 images, so fid.py leaves it off.

    python results/fid/first_pass.py --inception default_1.pt
"""
import argparse
import os
import subprocess
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import fid  # noqa: E402


SIZES = (3000, 3000, 50000)  # a sweep setting, another, a gFID-50k


def passes(inception, autotune):
    if autotune:  # fid.float32_mode leaves autotuning off; this keeps its TF32 setting and turns autotuning on
        original = fid.float32_mode

        def with_autotune(tf32):
            with original(tf32):
                torch.backends.cudnn.benchmark = True
                yield
        fid.float32_mode = fid.contextlib.contextmanager(with_autotune)
    model = fid.load_inception(inception, 'cuda')
    rng = np.random.default_rng(0)
    seconds = []
    for n in SIZES:
        images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        start = time.perf_counter()
        fid.compute_features(images, model)  # returns numpy arrays: the GPU work is done
        seconds.append(time.perf_counter() - start)
    print(f"autotune {'on ' if autotune else 'off'}: " + ', '.join(
        f'{n} images {s:.1f} s' for n, s in zip(SIZES, seconds)), flush=True)


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--inception', default=None, help="fid.py's --inception")
    parser.add_argument('--autotune', choices=['on', 'off'], help='one setting in this process (default: both, each in '
                        'a fresh process)')
    args = parser.parse_args()
    if args.autotune:
        passes(args.inception, args.autotune == 'on')
    else:
        for setting in ('on', 'off'):
            subprocess.run([sys.executable, __file__, '--autotune', setting]
                           + (['--inception', args.inception] if args.inception else []), check=True)
