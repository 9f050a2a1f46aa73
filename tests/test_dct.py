import re

import numpy as np
import pytest
import scipy.fft
import torch

import dct
import fid
from dct import dct2, idct2, lowpass, omega_schedule


@pytest.mark.parametrize('shape', [(2, 3, 32, 32), (4, 17, 9), (256, 256)])
def test_dct2_matches_scipy_in_float32_and_float64(shape):
    x = np.random.default_rng(0).standard_normal(shape)
    ref = scipy.fft.dctn(x, axes=(-2, -1), norm='ortho')
    for dtype, tol in ((torch.float32, 1e-6), (torch.float64, 1e-12)):
        out = dct2(torch.from_numpy(x).to(dtype)).double().numpy()
        assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < tol


def test_idct2_inverts_dct2_and_preserves_energy():
    x = torch.randn(3, 3, 24, 40, dtype=torch.float64)
    X = dct2(x)
    torch.testing.assert_close(idct2(X), x, rtol=0, atol=1e-12)
    torch.testing.assert_close(X.pow(2).sum((-2, -1)), x.pow(2).sum((-2, -1)), rtol=1e-12, atol=0)  # Parseval


def test_lowpass_keeps_exactly_the_top_left_coefficients_per_sample():
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    omega = torch.tensor([1, 7, 32])
    out = lowpass(x, omega)
    for b, w in enumerate(omega.tolist()):
        mask = torch.zeros(32, 32, dtype=torch.float64)
        mask[:w, :w] = 1
        torch.testing.assert_close(out[b], idct2(dct2(x[b]) * mask), rtol=0, atol=1e-12)
    torch.testing.assert_close(lowpass(x, 32), x, rtol=0, atol=1e-12)  # w = size is the identity
    torch.testing.assert_close(lowpass(x, 1)[0], x[0].mean((-2, -1), keepdim=True).expand(3, 32, 32), rtol=0, atol=1e-12)


def test_lowpass_is_float32_accurate_under_bf16_autocast():
    x = torch.randn(2, 3, 16, 16)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = lowpass(x, 5)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), lowpass(x.double(), 5), rtol=0, atol=1e-5)


EQ9 = [i if i <= 32 else 2 * i - 32 if i <= 48 else 12 * i - 512 for i in range(1, 65)]  # N = 64, 256 px


def test_nonuniform_schedule_is_eq9_for_64_tokens_at_256px():
    w = omega_schedule(64, 256)
    assert w == EQ9
    assert (w[31], w[47], w[63]) == (32, 64, 256)


@pytest.mark.parametrize('n_tokens,size', [(64, 256), (16, 32), (32, 32), (64, 512), (64, 64), (128, 256), (10, 37), (256, 256), (1, 8)])
@pytest.mark.parametrize('kind', ['nonuniform', 'uniform'])
def test_schedules_keep_eq7_and_end_at_the_image_size(n_tokens, size, kind):
    w = omega_schedule(n_tokens, size, kind)
    steps = np.diff([0] + w)
    assert len(w) == n_tokens and w[-1] == size
    assert steps.min() >= 1 and (np.diff(steps) >= 0).all(), steps


def test_schedule_generalisations_documented():
    assert omega_schedule(64, 256, 'uniform')[:3] == [4, 8, 12]
    assert omega_schedule(64, 512)[31:33] == [64, 68]  # 512 px: increments 2, 4, 24
    assert omega_schedule(16, 32) == list(range(1, 13)) + [14, 20, 26, 32]
    with pytest.raises(ValueError, match='unknown omega schedule'):
        omega_schedule(8, 32, 'linear')


@pytest.mark.parametrize('kind', ['nonuniform', 'uniform'])
def test_more_tokens_than_frequencies_share_cutoffs_in_runs(kind):
    w = omega_schedule(64, 32, kind)
    steps = np.diff([0] + w)
    assert len(w) == 64 and w[0] >= 1 and w[-1] == 32 and steps.min() >= 0
    if kind == 'uniform':
        assert w == [(i + 1) // 2 for i in range(1, 65)]  # two tokens per frequency
    else:  # eq. (9)'s shape: half the tokens on w <= size / 8
        assert w[31] == 4 and w[47] == 8


@pytest.mark.parametrize('n_tokens,size', [(64, 256), (32, 32), (16, 32), (64, 32), (64, 512), (10, 37), (1, 8)])
@pytest.mark.parametrize('kind', ['nonuniform_shared', 'nonuniform_psnr'])
def test_shared_schedules_never_decrease_and_end_at_the_image_size(n_tokens, size, kind):
    w = omega_schedule(n_tokens, size, kind)
    assert len(w) == n_tokens and w[0] >= 1 and w[-1] == size
    assert (np.diff(w) >= 0).all(), w


def test_shared_schedule_is_eq9_at_256px_and_keeps_its_proportions_at_32px():
    assert omega_schedule(64, 256, 'nonuniform_shared') == EQ9
    w = omega_schedule(32, 32, 'nonuniform_shared')
    assert w[15] <= 32 / 8 and w[23] <= 32 / 4  # half the tokens on w <= size/8, three quarters on w <= size/4
    assert omega_schedule(32, 32)[15] == 16  # what steps >= 1 make of it: the uniform schedule


def test_psnr_schedule_at_32px_pairs_tokens_on_a_cutoff_up_to_13_then_climbs():
    w = omega_schedule(32, 32, 'nonuniform_psnr')
    assert w == [1, 2, 2, 3, 3, 4, 4, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13,
                 16, 18, 21, 23, 25, 28, 30, 32]
    assert (w[15], w[23]) == (9, 13)  # the anchors: CIFAR-10's PSNR at eq. (9)'s prefixes N/2 and 3N/4 on ImageNet
    uniform, shared = omega_schedule(32, 32, 'uniform'), omega_schedule(32, 32, 'nonuniform_shared')
    assert all(s <= p <= u for s, p, u in zip(shared, w, uniform))  # between the two other choices at 32 px


def test_truncation_fid_grows_as_more_of_the_last_tokens_are_dropped(cifar_sample_dir, capsys, monkeypatch):
    try:
        fid.find_inception_weights()
    except fid.FIDError:
        pytest.skip(f'Inception weights not installed: {fid.FID_HELPER_INSTALL}')
    # the mean term of FID alone: the matrix square root of 2048 x 2048 covariances takes seconds on 2 cores
    monkeypatch.setattr(fid, 'frechet_distance', lambda mu1, sigma1, mu2, sigma2: float(np.sum((mu1 - mu2) ** 2)))
    with pytest.warns(UserWarning, match='covariance is singular'):
        dct.main(['--data', str(cifar_sample_dir), '--n_tokens', '32', '--images', '8', '--fid', 'uniform'])
    lines = re.findall(r'k = +(\d+) \(prefix (\d+), w = +(\d+) of 32\): FID ([\d.]+)', capsys.readouterr().out)
    assert [(int(k), int(prefix), int(w)) for k, prefix, w, _ in lines] == [(4, 28, 28), (8, 24, 24), (12, 20, 20)]
    fids = [float(value) for *_, value in lines]
    assert 0 < fids[0] < fids[1] < fids[2]
