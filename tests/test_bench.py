"""bench.py on the CPU with the tiny presets: every subcommand runs, prints its table last and writes JSON lines."""
import json

import torch

from bench import conv_flops, make_lpips
from conftest import make_image_folder, run


def bench(*argv):
    return run('bench.py', *argv).stdout


def read_records(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_sample_and_train_benches_on_cpu(tmp_path):
    out = tmp_path / 'bench.jsonl'
    stdout = bench('sample', '--preset', 'tiny', '--tok_preset', 'tiny', '--batch', 2, 3, '--cfg', 1.5,
                   '--reps', 1, '--device', 'cpu', '--tokens_per_step', 1, 4, '--profile', '--json', out)
    table = stdout[stdout.index('== sample'):]
    assert 'RANDOM weights' in stdout and 'floor img/s' in table and 'fast' in table and 'slow' in table
    assert 'tiny-p4/tiny' in table and '2 steps of 4 token(s)' in stdout
    records = read_records(out)
    assert [(r['tokens_per_step'], r['variant'], r['batch']) for r in records] == [
        (P, variant, B) for P in (1, 4) for B in (2, 3) for variant in ('slow', 'fast')]
    for r in records:
        assert 'error' not in r and r['images_per_s'] > 0 and r['gen_floor_ms'] > 0 and r['decode_ms'] > 0
        assert len(r['step_floor_ms']) == 8 // r['tokens_per_step']  # tiny: N = 8
    for fast in (records[1], records[5]):
        assert fast['check_ok'] and fast['check_greedy_token_match'] == 1.0  # float32: the fast path is the reference

    bench('train_gen', '--preset', 'tiny', '--batch', 4, '--warmup', 1, '--steps', 2, '--profile', '--device', 'cpu', '--json', out)
    bench('train_tok', '--preset', 'tiny', '--batch', 2, '--warmup', 1, '--steps', 1, '--device', 'cpu',
          '--lpips_resize', 64, '--json', out)
    records = read_records(out)
    lpips, _ = make_lpips('cpu')  # at the tiny preset's own 32 px
    images = torch.zeros(1, 3, 32, 32)
    assert records[-1]['lpips_resize'] == 64  # upsampled as train_tok.py --lpips_resize does: 4x the pixels
    assert 3.5 < records[-1]['lpips_fwd_flops_per_pair'] / conv_flops(lpips, images, images) < 4.5
    train = {r['bench']: r for r in records[8:]}
    assert set(train) == {'train_gen', 'train_tok'}
    for r in train.values():
        assert 'error' not in r and r['images_per_s'] > 0 and 0 < r['mfu'] and r['flops_per_step'] > 0
    assert train['train_gen']['tokens_per_s'] == train['train_gen']['images_per_s'] * 8  # tiny: N = 8

    stdout = bench('table', '--json', out)
    for kind in ('sample', 'train_gen', 'train_tok'):
        assert f'== {kind}' in stdout


def test_loader_bench_still_works(tmp_path):
    make_image_folder(tmp_path / 'data')
    stdout = bench('loader', '--data', tmp_path / 'data', '--size', 32, '--batch', 4, '--workers', 0,
                   '--warmup', 1, '--steps', 2, '--json', tmp_path / 'loader.jsonl')
    assert 'images_per_s=' in stdout and '== loader' in stdout
    assert read_records(tmp_path / 'loader.jsonl')[0]['bench'] == 'loader'
