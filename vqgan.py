"""
The MaskGIT VQGAN (Chang et al. 2022; ImageNet, 16x downsampling, 1,024 codes of dimension 256) in plain PyTorch:
the teacher of TiTok's two-stage recipe. In stage 1 the tokenizer's decoder learns to predict this VQGAN's code of
every patch (the "proxy codes"); in stage 2 this VQGAN's decoder turns the predicted codes into pixels
(train_tok.py --stage 1 / --stage 2).

The weights are TiTok's PyTorch conversion of the JAX release, the state dict maskgit-vqgan-imagenet-f16-256.bin,
which the Hugging Face repo fun-research/TiTok hosts. Module and parameter names here are that file's key names (the
layout of TiTok's modeling/modules/maskgit_vqgan.py), so it loads as is. The layout (width, channel multipliers,
blocks per resolution, codebook) is a VQGANConfig, read off the weights by load_vqgan, so a smaller VQGAN of the same
design (tests, 32 px data) loads the same way.

Images are in [-1, 1] as everywhere in this repo; the converted weights work on [0, 1] images, which the encoder's
input and the decoder's output are converted from and to.
"""
import os
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

WEIGHTS_SOURCE = ("TiTok's converted MaskGIT VQGAN, maskgit-vqgan-imagenet-f16-256.bin, is in the Hugging Face repo "
                  "fun-research/TiTok: https://huggingface.co/fun-research/TiTok/resolve/main/maskgit-vqgan-imagenet-f16-256.bin")


@dataclass(frozen=True)
class VQGANConfig:
    """The defaults are the MaskGIT ImageNet VQGAN of maskgit-vqgan-imagenet-f16-256.bin."""
    base_channels: int = 128
    channel_mult: tuple = (1, 1, 2, 2, 4)  # one resolution each; all but the last halve the resolution (f16)
    res_blocks: int = 2  # residual blocks per resolution, and in the middle of encoder and decoder
    code_dim: int = 256
    codebook_size: int = 1024

    @property
    def downsample(self):
        return 2 ** (len(self.channel_mult) - 1)

    def channels(self, level):
        return self.base_channels * self.channel_mult[level]


def group_norm(channels):
    return nn.GroupNorm(32, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """Two (GroupNorm, SiLU, 3x3 conv) layers and a residual. Where the width changes, the residual is a 1x1 conv of
    the block's own output rather than of its input: MaskGIT's JAX model does this, and its converted weights expect it."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.nin_shortcut = nn.Conv2d(out_channels, out_channels, 1, bias=False) if in_channels != out_channels else None

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h + (x if self.nin_shortcut is None else self.nin_shortcut(h))


class Level(nn.Module):
    """One resolution: residual blocks (block.j), then the change of resolution: 'down' a 2x2 average pool (encoder),
    'up' a nearest-neighbour 2x upsampling and a 3x3 conv (upsample_conv, decoder), None none (the last level)."""

    def __init__(self, in_channels, out_channels, n_blocks, resample):
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(in_channels if j == 0 else out_channels, out_channels) for j in range(n_blocks))
        self.resample = resample
        if resample == 'up':
            self.upsample_conv = nn.Conv2d(out_channels, out_channels, 3, padding=1)

    def forward(self, h):
        for block in self.block:
            h = block(h)
        if self.resample == 'down':
            return F.avg_pool2d(h, 2)
        if self.resample == 'up':
            return self.upsample_conv(F.interpolate(h, scale_factor=2.0, mode='nearest'))
        return h


class Encoder(nn.Module):
    """Images in [-1, 1] (B, 3, H, W) -> continuous codes (B, code_dim, H / f, W / f)."""

    def __init__(self, config):
        super().__init__()
        levels = len(config.channel_mult)
        self.conv_in = nn.Conv2d(3, config.base_channels, 3, padding=1, bias=False)
        widths_in = [config.base_channels] + [config.channels(i) for i in range(levels - 1)]
        self.down = nn.ModuleList(Level(widths_in[i], config.channels(i), config.res_blocks,
                                        'down' if i < levels - 1 else None) for i in range(levels))
        width = config.channels(levels - 1)
        self.mid = nn.ModuleList(ResnetBlock(width, width) for _ in range(config.res_blocks))
        self.norm_out = group_norm(width)
        self.conv_out = nn.Conv2d(width, config.code_dim, 1)

    def forward(self, x):
        h = self.conv_in((x + 1) / 2)
        for block in [*self.down, *self.mid]:
            h = block(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Code embeddings (B, code_dim, h, w) -> images in [-1, 1] (B, 3, f h, f w), not clamped (losses see the raw output)."""

    def __init__(self, config):
        super().__init__()
        levels = len(config.channel_mult)
        width = config.channels(levels - 1)
        self.conv_in = nn.Conv2d(config.code_dim, width, 3, padding=1)
        self.mid = nn.ModuleList(ResnetBlock(width, width) for _ in range(config.res_blocks))
        # up.i works at level i's resolution and runs from the coarsest (i = levels - 1) to the finest: the file's order
        self.up = nn.ModuleList(Level(config.channels(min(i + 1, levels - 1)), config.channels(i), config.res_blocks,
                                      'up' if i > 0 else None) for i in range(levels))
        self.norm_out = group_norm(config.channels(0))
        self.conv_out = nn.Conv2d(config.channels(0), 3, 3, padding=1)

    def forward(self, embeddings):
        h = self.conv_in(embeddings)
        for block in [*self.mid, *reversed(self.up)]:
            h = block(h)
        return 2 * self.conv_out(F.silu(self.norm_out(h))) - 1


class Codebook(nn.Module):
    def __init__(self, size, dim):
        super().__init__()
        self.embedding = nn.Embedding(size, dim)

    def nearest(self, z):
        """Continuous codes (B, D, h, w) -> the nearest code's index by squared L2 distance (B, h, w), in float32
        (bf16 distances would mis-assign codes)."""
        with torch.autocast(z.device.type, enabled=False):
            z = z.float().permute(0, 2, 3, 1)
            codebook = self.embedding.weight.float()
            distances = z.pow(2).sum(-1, keepdim=True) - 2 * z @ codebook.T + codebook.pow(2).sum(-1)
            return distances.argmin(-1)

    def embed(self, codes):
        """Code indices (B, h, w) -> their embeddings (B, D, h, w)."""
        return self.embedding(codes).permute(0, 3, 1, 2)


class VQGAN(nn.Module):
    def __init__(self, config=VQGANConfig()):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.quantize = Codebook(config.codebook_size, config.code_dim)
        self.decoder = Decoder(config)

    @torch.no_grad()
    def encode(self, x):
        """Images in [-1, 1] (B, 3, H, W) -> codes (B, H / f, W / f)."""
        return self.quantize.nearest(self.encoder(x))

    def decode(self, embeddings):
        """Code embeddings (B, code_dim, h, w), e.g. a soft mixture of codes -> images in [-1, 1], not clamped."""
        return self.decoder(embeddings)

    def decode_codes(self, codes):
        """Codes (B, h, w) -> images in [-1, 1], not clamped."""
        return self.decode(self.quantize.embed(codes))


def config_of_weights(state):
    """The VQGANConfig whose VQGAN has the state dict `state`, read off its shapes (KeyError where keys are missing)."""
    levels = 1 + max(int(k.split('.')[2]) for k in state if k.startswith('encoder.down.'))
    blocks = 1 + max(int(k.split('.')[4]) for k in state if k.startswith('encoder.down.0.block.'))
    base = state['encoder.conv_in.weight'].shape[0]
    mult = tuple(state[f'encoder.down.{i}.block.0.conv1.weight'].shape[0] // base for i in range(levels))
    size, dim = state['quantize.embedding.weight'].shape
    return VQGANConfig(base_channels=base, channel_mult=mult, res_blocks=blocks, code_dim=dim, codebook_size=size)


def load_vqgan(path):
    """The frozen VQGAN (eval mode, no gradients) of the weights file at path, a state dict under TiTok's key names:
    maskgit-vqgan-imagenet-f16-256.bin, or a VQGAN of the same design. Loaded as data only (weights_only: a file whose
    pickle would run code is refused unread); every key and shape is checked before loading. A missing or wrong file
    raises FileNotFoundError or ValueError saying where the weights come from."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"VQGAN weights {path!r} do not exist. {WEIGHTS_SOURCE}")
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # a foreign pickle, a truncated file or random bytes raise almost anything
        reason = f"{type(e).__name__}: {e}".partition('\n')[0]
        raise ValueError(f"{path!r} cannot be read as VQGAN weights ({reason}). {WEIGHTS_SOURCE}") from None
    if not (isinstance(state, dict) and state and all(torch.is_tensor(v) for v in state.values())):
        raise ValueError(f"{path!r} is not a state dict of tensors. {WEIGHTS_SOURCE}")
    try:
        vqgan = VQGAN(config_of_weights(state))
    except (KeyError, ValueError, ZeroDivisionError) as e:  # missing keys; widths GroupNorm(32) cannot take
        raise ValueError(f"{path!r} is not a MaskGIT VQGAN state dict ({type(e).__name__}: {e}). {WEIGHTS_SOURCE}") from None
    expected = {k: tuple(v.shape) for k, v in vqgan.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    wrong = ([f"missing {k}" for k in expected if k not in found] + [f"unexpected {k}" for k in found if k not in expected]
             + [f"{k} is {found[k]}, expected {expected[k]}" for k in expected if k in found and found[k] != expected[k]])
    if wrong:
        raise ValueError(f"{path!r} does not match the MaskGIT VQGAN layout ({len(wrong)} problems: "
                         f"{'; '.join(wrong[:5])}). {WEIGHTS_SOURCE}")
    vqgan.load_state_dict(state)
    return vqgan.eval().requires_grad_(False)
