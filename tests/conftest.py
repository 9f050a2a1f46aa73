import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


@pytest.fixture(scope='session')
def cifar_sample_dir():
    """500 real CIFAR-10 images bundled in assets/ (<class>/<image>.jpg): the first 50 per class of the test split."""
    return Path(REPO) / 'assets' / 'cifar10_sample'


@pytest.fixture
def cifar_images(cifar_sample_dir):
    """Eight real 32x32 CIFAR-10 test images in [-1, 1], one or two per class."""
    classes = sorted(os.listdir(cifar_sample_dir))[:8]
    paths = [sorted((cifar_sample_dir / c).iterdir())[0] for c in classes]
    arr = np.stack([np.asarray(Image.open(p).convert('RGB')) for p in paths])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1


# one thread per process: the tiny models are far slower when threads fight over shared cores
ENV = {**os.environ, 'OMP_NUM_THREADS': '1'}
N_CLASSES, PER_CLASS = 3, 4


def run(*argv, expect_ok=True):
    result = subprocess.run([sys.executable, *map(str, argv)], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    if expect_ok:
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    else:
        assert result.returncode != 0, result.stdout[-2000:]
    return result


def train_gen(tok_ckpt, out_dir, *extra, expect_ok=True):
    return run('train_gen.py', '--preset', 'tiny', '--tok_ckpt', tok_ckpt, '--out_dir', out_dir, '--batch_size', 8,
               '--workers', 0, '--log_every', 1, '--sample_every', 0, *extra, expect_ok=expect_ok)


def make_image_folder(root):
    """PER_CLASS images in each of N_CLASSES folders: one dominant colour per class plus noise, not square."""
    rng = np.random.default_rng(0)
    for c in range(N_CLASSES):
        os.makedirs(root / f'class{c}', exist_ok=True)
        for i in range(PER_CLASS):
            img = rng.integers(0, 80, (40, 48, 3))
            img[..., c] += 150
            Image.fromarray(img.astype(np.uint8)).save(root / f'class{c}' / f'{i}.png')


@pytest.fixture(scope='session')
def tiny_tokenizer(tmp_path_factory):
    """(image folder, tokenizer checkpoint): 2 steps of train_tok.py tiny, built once per session in its base temp dir."""
    root = tmp_path_factory.getbasetemp() / 'tiny_tokenizer'
    tok_ckpt = root / 'tok' / 'ckpt.pt'
    if not tok_ckpt.exists():
        make_image_folder(root / 'data')
        run('train_tok.py', '--preset', 'tiny', '--data', root / 'data', '--lpips_weight', 0, '--gan_weight', 0,
            '--max_steps', 2, '--batch_size', 8, '--workers', 0, '--out_dir', root / 'tok', '--log_every', 1)
    return root / 'data', tok_ckpt


def save_modified_tokenizer(tok_ckpt, path, edit):
    """A tokenizer checkpoint made from tok_ckpt by edit(ckpt) (other weights, other config)."""
    ckpt = torch.load(tok_ckpt, map_location='cpu', weights_only=True)
    edit(ckpt)
    torch.save(ckpt, path)
    return path


def perturb_weights(ckpt):
    for weights in (ckpt['model'], ckpt['ema']):
        weights['to_code.weight'] = weights['to_code.weight'] + 0.5
