import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
SHARED_DATA = os.path.join(os.path.dirname(REPO), 'shared', 'data')


@pytest.fixture
def cifar_test_dir():
    path = os.path.join(SHARED_DATA, 'cifar10', 'test')
    if not os.path.isdir(path):
        pytest.skip(f'real images not found at {path}')
    return path


@pytest.fixture
def cifar_images(cifar_test_dir):
    """Eight real 32x32 CIFAR-10 test images in [-1, 1], one or two per class."""
    import numpy as np
    import torch
    from PIL import Image
    classes = sorted(os.listdir(cifar_test_dir))[:8]
    paths = [os.path.join(cifar_test_dir, c, sorted(os.listdir(os.path.join(cifar_test_dir, c)))[0]) for c in classes]
    arr = np.stack([np.asarray(Image.open(p).convert('RGB')) for p in paths])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1
