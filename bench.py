"""
Throughput benchmarks that print a short table and write JSON.

    python bench.py loader --data ../shared/data/imagenet256-sample --size 256 --batch 256 --workers 16

loader: images/s of the training data loader alone (decode + ADM center crop + collate), the figure
the trainers must not be held back by.
"""
import argparse
import json
import time

import torch

from data import image_loader


def bench_loader(args):
    _, loader = image_loader(args.data, args.size, args.batch, workers=args.workers)
    batches = iter(loader)
    for _ in range(args.warmup):  # let every worker fill its prefetch queue
        next(batches)
    t0, n = time.time(), 0
    for _ in range(args.steps):
        images, _, _ = next(batches)
        n += len(images)
    dt = time.time() - t0
    return {'bench': 'loader', 'data': args.data, 'size': args.size, 'batch': args.batch,
            'workers': args.workers, 'images_per_s': n / dt, 'cpu_threads': torch.get_num_threads()}


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('what', choices=['loader'])
    parser.add_argument('--data', required=True)
    parser.add_argument('--size', type=int, default=256)
    parser.add_argument('--batch', type=int, default=256)
    parser.add_argument('--workers', type=int, default=8)
    parser.add_argument('--warmup', type=int, default=5)
    parser.add_argument('--steps', type=int, default=30)
    parser.add_argument('--json', help='append the result to this JSON-lines file')
    args = parser.parse_args()
    result = {'loader': bench_loader}[args.what](args)
    print(' '.join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))
    if args.json:
        with open(args.json, 'a') as f:
            f.write(json.dumps(result) + '\n')
