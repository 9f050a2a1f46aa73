"""
Image loading shared by the trainers and the evaluators: an ImageFolder that never crashes on a
bad file, ADM's center crop, and a sampler whose order survives kill-and-resume and DDP.
"""
import itertools
import os
import warnings
import zipfile

import numpy as np
import torch
from PIL import Image

import common

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.webp', '.bmp', '.tif', '.tiff', '.gif')


def find_images(root, dataset_root=None):
    """Sorted paths of the image files under root, recursively. Symbolic links are followed, but never into a folder
    already walked (a link loop would list images again and again), nor, when root is one class of dataset_root, to
    a file or folder of dataset_root outside root (the link's image would get this class's label)."""
    real_root = os.path.realpath(root)
    fenced = os.path.realpath(dataset_root) if dataset_root else None

    def allowed(path):
        real = os.path.realpath(path)
        return fenced is None or not is_inside(real, fenced) or is_inside(real, real_root)

    paths, walked = [], set()
    for folder, subfolders, names in os.walk(root, followlinks=True):
        walked.add(os.path.realpath(folder))
        subfolders[:] = [d for d in subfolders if os.path.realpath(os.path.join(folder, d)) not in walked
                         and allowed(os.path.join(folder, d))]
        paths += [os.path.join(folder, name) for name in names
                  if name.lower().endswith(IMAGE_EXTENSIONS) and allowed(os.path.join(folder, name))]
    return sorted(paths)


def is_inside(path, folder):
    return os.path.commonpath([path, folder]) == folder


def class_names(root):
    """The class folders of an image folder, sorted: its top-level folders but hidden ones (.ipynb_checkpoints)."""
    return sorted(d.name for d in os.scandir(root) if d.is_dir() and not d.name.startswith('.'))


def list_images(root):
    """Sorted image paths under root (recursive) and their class ids (sorted top-level folder name; hidden
    folders such as .ipynb_checkpoints are not classes). A root without class folders is one class."""
    if not os.path.isdir(root):
        raise common.UserError(f"image folder {root!r} does not exist: pass a folder of <class>/<image> files")
    classes = class_names(root)
    if not classes:
        paths = find_images(root)
        labels = [0] * len(paths)
    else:
        per_class = [find_images(os.path.join(root, cls), dataset_root=root) for cls in classes]
        empty = [cls for cls, found in zip(classes, per_class) if not found]
        if empty:
            raise common.UserError(f"class folder(s) {', '.join(empty)} of {root!r} hold no images: remove them or add "
                                   f"images (an empty folder would still take a class id)")
        paths = [path for found in per_class for path in found]
        labels = [label for label, found in enumerate(per_class) for _ in found]
        loose = [d.name for d in os.scandir(root) if d.is_file() and d.name.lower().endswith(IMAGE_EXTENSIONS)]
        if loose:
            warnings.warn(f"{len(loose)} image(s) directly in {root!r}, beside its class folders, are not used "
                          f"(e.g. {loose[0]!r}): move them into a class folder")
    if not paths:
        raise common.UserError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {root!r}: pass a folder of "
                               f"<class>/<image> files")
    return paths, labels, classes


def load_npz(path):
    """{name: array} of an .npz, read whole; a missing, damaged or foreign file (pickled objects) stops with a
    UserError naming it."""
    try:
        with np.load(path) as archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise common.UserError(f"{path}: not a readable .npz of arrays ({str(e).splitlines()[0]}): pass an .npz with "
                               f"uint8 images (N, H, W, 3) as arr_0") from None


def center_crop_arr(img, size):
    """ADM's ImageNet preprocessing: box-halve while the short side is >= 2*size, bicubic-resize the short side to size, center crop."""
    while min(img.size) >= 2 * size:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.BOX)
    scale = size / min(img.size)
    img = img.resize(tuple(round(x * scale) for x in img.size), resample=Image.BICUBIC)
    arr = np.asarray(img)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return arr[top:top + size, left:left + size]


# Pillow modes wider than 8 bits per channel and the value of their white; convert('RGB') would clip them to 255
HIGH_BIT_DEPTH_WHITE = {'I;16': 65535, 'I;16L': 65535, 'I;16B': 65535, 'I;16N': 65535,
                        'I': 65535,  # 32-bit ints: how Pillow opens 16-bit grey PNGs and TIFFs
                        'F': 1.0}  # float images hold [0, 1]
UNREADABLE_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)  # PIL's, for bad files


def to_8bit(img):
    """A 16-bit, 32-bit int or float grey image scaled to 8-bit 'L' (white stays white); other modes unchanged."""
    white = HIGH_BIT_DEPTH_WHITE.get(img.mode)
    if white is None:
        return img
    arr = np.asarray(img, dtype=np.float64) * (255 / white)
    return Image.fromarray(arr.round().clip(0, 255).astype(np.uint8), 'L')


def load_rgb(path, transparent_to_white=True):
    """Open an image as 8-bit RGB (grey, 16-bit, RGBA, CMYK, palette all converted); raises one of
    UNREADABLE_IMAGE_ERRORS on unreadable, truncated or oversized (decompression bomb) files.
    transparent_to_white: composite alpha onto white; False drops it (as pytorch-fid's FID does)."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # PIL's palette-transparency and EXIF chatter
        with Image.open(path) as img:
            img.load()
            img = to_8bit(img)
            if transparent_to_white and (img.mode == 'RGBA' or (img.mode == 'P' and 'transparency' in img.info)):
                img = img.convert('RGBA')
                background = Image.new('RGBA', img.size, (255, 255, 255, 255))
                img = Image.alpha_composite(background, img)  # transparent -> white, not black
            return img.convert('RGB')


class ImageFolder(torch.utils.data.Dataset):
    """Yields (uint8 CHW tensor, label), or None for a file that cannot be decoded (dropped by collate_skip_bad)."""

    def __init__(self, root, size):
        self.paths, self.labels, self.classes = list_images(root)
        self.size = size

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            arr = center_crop_arr(load_rgb(self.paths[i]), self.size)
        except UNREADABLE_IMAGE_ERRORS:
            return None
        return torch.from_numpy(arr.copy()).permute(2, 0, 1), self.labels[i]


def readable_samples(dataset, n):
    """Up to n readable samples of dataset (preview images), evenly spread over it where those are readable."""
    spread = range(0, len(dataset), max(1, len(dataset) // n))
    others = (i for i in range(len(dataset)) if i not in spread)  # stand-ins for unreadable ones
    found = []
    for i in itertools.chain(spread, others):
        if len(found) == n:
            break
        if (item := dataset[i]) is not None:
            found.append(item)
    if not found:
        raise common.UserError(f"none of the {len(dataset)} image files could be read: check the folder's files")
    return found


def collate_skip_bad(batch):
    """Stack the good samples; return (images uint8 BCHW, labels, number of bad files skipped)."""
    good = [b for b in batch if b is not None]
    images = torch.stack([b[0] for b in good]) if good else torch.empty(0, dtype=torch.uint8)
    labels = torch.tensor([b[1] for b in good], dtype=torch.long)
    return images, labels, len(batch) - len(good)


class ResumableSampler(torch.utils.data.Sampler):
    """
    Infinite stream of indices: epoch e is a permutation seeded by (seed, e), cut into global batches.
    Rank r takes the r-th contiguous slice of every global batch, so G processes together see exactly
    the batches one process would, and the stream can restart at any global step.
    """

    def __init__(self, n, global_batch, rank=0, world_size=1, seed=0, start_step=0):
        assert global_batch % world_size == 0, f"global batch {global_batch} must divide by the {world_size} processes"
        self.n, self.global_batch, self.rank, self.world_size = n, global_batch, rank, world_size
        self.seed, self.start_step = seed, start_step
        self.steps_per_epoch = n // global_batch  # drop the ragged tail so every step has a full batch
        if not self.steps_per_epoch:
            raise common.UserError(f"--batch_size {global_batch} is larger than the data set's {n} images: pass "
                                   f"--batch_size {n} or less, or more data")

    def __iter__(self):
        local = self.global_batch // self.world_size
        step = self.start_step
        while True:
            epoch, k = divmod(step, self.steps_per_epoch)
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            order = torch.randperm(self.n, generator=g)
            for k in range(k, self.steps_per_epoch):
                start = k * self.global_batch + self.rank * local
                yield from order[start:start + local].tolist()
            step = (epoch + 1) * self.steps_per_epoch


def image_loader(root, size, global_batch, rank=0, world_size=1, seed=0, start_step=0, workers=4):
    """Infinite loader of (uint8 images, labels, n_bad) for this rank, resumable at start_step."""
    dataset = ImageFolder(root, size)
    sampler = ResumableSampler(len(dataset), global_batch, rank, world_size, seed, start_step)
    return dataset, torch.utils.data.DataLoader(
        dataset, batch_size=global_batch // world_size, sampler=sampler, num_workers=workers,
        collate_fn=collate_skip_bad, pin_memory=torch.cuda.is_available(), drop_last=True,
        persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None)


def to_float(images, device):
    """uint8 images (B, 3, H, W) -> float32 in [-1, 1] on device, as the tokenizer takes them."""
    return images.to(device, non_blocking=True).float() / 127.5 - 1


def to_uint8(images):
    """Images in [-1, 1] (B, 3, H, W) -> uint8 (B, H, W, 3) numpy, rounding as ADM's samplers do."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def save_grid(images, path, ncol, pad=2):
    """Save images in [-1, 1] as one PNG grid with ncol columns."""
    arr = to_uint8(images)
    n, h, w, _ = arr.shape
    nrow = -(-n // ncol)
    grid = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for i, img in enumerate(arr):
        r, c = divmod(i, ncol)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = img
    save_png(grid, path)


def save_png(array, path):
    """uint8 (H, W, 3) -> a PNG at path, written whole or not at all (common.atomic_write)."""
    common.atomic_write(path, lambda f: Image.fromarray(array).save(f, format='PNG'))
