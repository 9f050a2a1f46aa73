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
