"""scripts/prepare_cifar10.py on small archives laid out as the official cifar-10-python.tar.gz."""
import io
import os
import pickle
import subprocess
import sys
import tarfile

import numpy as np
from PIL import Image

from conftest import REPO

LABEL_NAMES = ['airplane', 'automobile', 'bird']


def batch(rng, n):
    """A batch as the archive pickles it: bytes keys, rows of 3072 uint8 (1024 red, then green, then blue)."""
    return {b'batch_label': b'fake', b'labels': rng.integers(0, len(LABEL_NAMES), n).tolist(),
            b'data': rng.integers(0, 256, (n, 3072), dtype=np.uint8), b'filenames': [b'x.png'] * n}


def make_archive(path, members):
    with tarfile.open(path, 'w:gz') as archive:
        for name, obj in members.items():
            data = obj if isinstance(obj, bytes) else pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f'cifar-10-batches-py/{name}')
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def prepare(*argv):
    return subprocess.run([sys.executable, os.path.join(REPO, 'scripts', 'prepare_cifar10.py'), *map(str, argv)],
                          capture_output=True, text=True, timeout=120)


def test_archive_becomes_class_folders_with_the_archives_pixels(tmp_path):
    rng = np.random.default_rng(0)
    batches = {f'data_batch_{i}': batch(rng, 4) for i in range(1, 6)} | {'test_batch': batch(rng, 3)}
    make_archive(tmp_path / 'cifar.tar.gz', {**batches, 'batches.meta': {b'label_names': [n.encode() for n in LABEL_NAMES]}})
    result = prepare(tmp_path / 'cifar.tar.gz', tmp_path / 'out')
    assert result.returncode == 0, result.stderr
    assert 'wrote 20 training and 3 test images of 3 classes' in result.stdout
    for split, names in (('train', [f'data_batch_{i}' for i in range(1, 6)]), ('test', ['test_batch'])):
        assert sorted(os.listdir(tmp_path / 'out' / split)) == LABEL_NAMES
        rows = np.concatenate([batches[name][b'data'] for name in names])
        labels = sum((batches[name][b'labels'] for name in names), [])
        for label, name in enumerate(LABEL_NAMES):  # each class's images, numbered in the archive's order
            expected = rows[np.array(labels) == label].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            files = sorted(os.listdir(tmp_path / 'out' / split / name))
            assert files == [f'{k:04d}.png' for k in range(len(expected))]
            for file, image in zip(files, expected):
                assert np.array_equal(np.asarray(Image.open(tmp_path / 'out' / split / name / file)), image)


def test_archive_whose_pickle_would_run_code_is_refused_unread(tmp_path):
    class RunsCode:
        def __reduce__(self):
            return os.system, (f'touch {tmp_path / "ran"}',)

    make_archive(tmp_path / 'bad.tar.gz', {'batches.meta': pickle.dumps(RunsCode())})
    result = prepare(tmp_path / 'bad.tar.gz', tmp_path / 'out')
    assert result.returncode != 0 and 'refused unread (it could run code)' in result.stderr
    assert not (tmp_path / 'ran').exists()
