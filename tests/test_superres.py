"""superres.py: the stride and patch splits, spectral completion against hand-made expectations, and the CLI on
tiny checkpoints built by the real trainers."""
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from common import UserError
from conftest import make_image_folder, run, train_gen
from generator import GPT, GPTConfig
import superres
from superres import complete, merge, split, upsample
from tokenizer import TokConfig, Tokenizer


def test_stride_split_is_polyphase_and_patch_split_is_quadrants():
    x = torch.randn(2, 3, 8, 8)
    stride, patch = split(x, 'stride').view(2, 4, 3, 4, 4), split(x, 'patch').view(2, 4, 3, 4, 4)
    for i, (a, b) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        assert torch.equal(stride[:, i], x[:, :, a::2, b::2])
        assert torch.equal(patch[:, i], x[:, :, 4 * a:4 * a + 4, 4 * b:4 * b + 4])


@pytest.mark.parametrize('mode', ['stride', 'patch'])
def test_merge_inverts_split_exactly(mode):
    x = torch.randn(3, 3, 16, 16)
    assert torch.equal(merge(split(x, mode), mode), x)
    subs = torch.randn(12, 3, 8, 8)
    assert torch.equal(split(merge(subs, mode), mode), subs)


def tiny_models():
    torch.manual_seed(0)
    tok = Tokenizer(TokConfig.preset('tiny')).eval()
    gpt = GPT(GPTConfig.preset('tiny', vocab_size=tok.config.codebook_size, n_tokens=tok.config.n_tokens)).eval()
    return gpt, tok


@pytest.mark.parametrize('mode', ['stride', 'patch'])
def test_keeping_all_tokens_gives_the_sub_images_reconstructions(mode, cifar_images):
    """k = N: nothing is generated; each pixel of the 2x image is the reconstruction of the sub-image it fell in,
    assembled here by slicing, independently of merge."""
    gpt, tok = tiny_models()
    x, labels = cifar_images[:3], torch.tensor([0, 4, 9])
    out = complete(gpt, tok, x, labels, keep=tok.config.n_tokens, mode=mode)
    up, S = upsample(x), tok.config.image_size
    assert up.shape == out.shape == (3, 3, 2 * S, 2 * S)
    expected = torch.empty_like(up)
    for a in (0, 1):
        for b in (0, 1):
            if mode == 'stride':
                where = (slice(None), slice(None), slice(a, None, 2), slice(b, None, 2))
            else:
                where = (slice(None), slice(None), slice(a * S, (a + 1) * S), slice(b * S, (b + 1) * S))
            expected[where] = tok.decode(tok.encode(up[where].contiguous()))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_completion_keeps_the_first_k_tokens_and_samples_the_rest_for_the_image_class(cifar_images, monkeypatch):
    gpt, tok = tiny_models()
    x, labels, k = cifar_images[:2], torch.tensor([3, 7]), 3
    calls = []
    generate = gpt.generate

    def spy(labels, prefix=None, **kw):
        codes = generate(labels, prefix=prefix, **kw)
        calls.append((labels, prefix, codes))
        return codes
    monkeypatch.setattr(gpt, 'generate', spy)
    out = complete(gpt, tok, x, labels, keep=k, mode='patch', generator=torch.Generator().manual_seed(0), cfg_scale=1.5)
    (call_labels, prefix, codes), = calls
    encoded = tok.encode(split(upsample(x), 'patch'))
    assert torch.equal(call_labels, torch.tensor([3, 3, 3, 3, 7, 7, 7, 7]))
    assert torch.equal(prefix, encoded[:, :k]) and torch.equal(codes[:, :k], encoded[:, :k])
    assert codes.shape == encoded.shape
    torch.testing.assert_close(out, merge(tok.decode(codes), 'patch'))


@pytest.fixture(scope='module')
def generator_ckpt(tiny_tokenizer, tmp_path_factory):
    data, tok_ckpt = tiny_tokenizer
    out_dir = tmp_path_factory.mktemp('gen')
    train_gen(tok_ckpt, out_dir, '--data', data, '--max_steps', 2, '--lr', 0.3)
    return out_dir / 'ckpt.pt'


def test_cli_writes_each_output_the_side_by_side_picture_and_report(generator_ckpt, tmp_path):
    rng = np.random.default_rng(0)
    npz = tmp_path / 'samples_5x32x32x3.npz'
    np.savez(npz, arr_0=rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8), labels=np.array([0, 1, 2, 0, 1]))
    out = tmp_path / 'out'
    run('superres.py', '--ckpt', generator_ckpt, '--input', npz, '--out', out, '--keep', 4, 8, '--batch_size', 2,
        '--show', 3, '--device', 'cpu')
    names = ['plain', 'stride_k4', 'patch_k4', 'stride_k8', 'patch_k8']
    report = json.loads((out / 'superres.json').read_text())
    assert list(report['outputs']) == names
    for name in names:
        with np.load(out / f'superres_{name}_5x64x64x3.npz') as f:
            assert f['arr_0'].shape == (5, 64, 64, 3) and f['labels'].tolist() == [0, 1, 2, 0, 1]
        assert report['outputs'][name]['psnr_downsampled_vs_input'] > 0
    cell = 64 + 2  # save_grid pads by 2 pixels
    assert Image.open(out / 'side_by_side.png').size == (5 * cell + 2, 3 * cell + 2)


def test_cli_reads_an_image_folder_and_refuses_images_of_another_size(generator_ckpt, tmp_path):
    make_image_folder(tmp_path / 'data')  # the generator's own class folders, images center-cropped to 32 px
    run('superres.py', '--ckpt', generator_ckpt, '--input', tmp_path / 'data', '--out', tmp_path / 'out',
        '--modes', 'stride', '--keep', 6, '--limit', 3, '--device', 'cpu')
    with np.load(tmp_path / 'out' / 'superres_stride_k6_3x64x64x3.npz') as f:
        assert f['labels'].tolist() == [0, 0, 0]
    npz = tmp_path / 'big.npz'
    np.savez(npz, arr_0=np.zeros((2, 64, 64, 3), dtype=np.uint8))
    refused = run('superres.py', '--ckpt', generator_ckpt, '--input', npz, '--device', 'cpu', expect_ok=False)
    assert 'expected uint8 (n, 32, 32, 3)' in refused.stderr


def test_cli_keeps_seven_eighths_of_the_tokens_by_default(generator_ckpt, tmp_path):
    npz = tmp_path / 'samples_2x32x32x3.npz'
    np.savez(npz, arr_0=np.zeros((2, 32, 32, 3), dtype=np.uint8))
    run('superres.py', '--ckpt', generator_ckpt, '--input', npz, '--out', tmp_path / 'out', '--modes', 'patch',
        '--device', 'cpu')
    assert list(json.loads((tmp_path / 'out' / 'superres.json').read_text())['outputs']) == ['patch_k7']  # N = 8


@pytest.mark.parametrize('flag, value, message', [
    ('--top_p', 1.5, '--top_p 1.5: out of range, use 0 (off) .. 1'),
    ('--top_k', 1000, '--top_k 1000: out of range, use 0 (off) .. K=64'),
    ('--temperature', 0, '--temperature 0.0: out of range, use a value above 0'),
    ('--cfg', 'nan', '--cfg nan: out of range, use a finite guidance scale'),
    ('--batch_size', 0, '--batch_size 0: must be at least 1'),
])
def test_cli_stops_on_out_of_range_flags_before_completing(generator_ckpt, tmp_path, flag, value, message):
    npz = tmp_path / 'samples_2x32x32x3.npz'
    np.savez(npz, arr_0=np.zeros((2, 32, 32, 3), dtype=np.uint8))
    with pytest.raises(UserError, match=re.escape(message)):
        superres.main(['--ckpt', str(generator_ckpt), '--input', str(npz), '--out', str(tmp_path / 'out'),
                       '--device', 'cpu', f'{flag}={value}'])
    assert not (tmp_path / 'out').exists()


def test_an_out_that_cannot_be_a_folder_stops_before_any_completion(generator_ckpt, tmp_path, monkeypatch):
    """superres.py created --out only after all the work, so an existing file there lost every output."""
    npz = tmp_path / 'samples_2x32x32x3.npz'
    np.savez(npz, arr_0=np.zeros((2, 32, 32, 3), dtype=np.uint8))
    (tmp_path / 'a_file').write_bytes(b'')
    monkeypatch.setattr(superres, 'complete', lambda *a, **k: pytest.fail('completed before --out was checked'))
    with pytest.raises(UserError, match=r"--out: .*a_file' is not a writable folder .*: pass another --out"):
        superres.main(['--ckpt', str(generator_ckpt), '--input', str(npz), '--out', str(tmp_path / 'a_file'),
                       '--device', 'cpu'])


@pytest.mark.parametrize('labels, flags, message', [
    (np.array([0, 1, 2]), (), 'labels of shape (3,) for 2 images: save one class id per image'),
    (np.array([0, 3]), (), 'labels 0..3 are not class ids of this generator, 0..2'),
    (np.array([0, 1]), ('--limit', '0'), '--limit 0: must be at least 1'),
])
def test_bad_labels_and_limit_are_named_before_completing(generator_ckpt, tmp_path, monkeypatch, labels, flags, message):
    npz = tmp_path / 'samples_2x32x32x3.npz'
    np.savez(npz, arr_0=np.zeros((2, 32, 32, 3), dtype=np.uint8), labels=labels)
    monkeypatch.setattr(superres, 'complete', lambda *a, **k: pytest.fail('completed despite bad input'))
    with pytest.raises(UserError, match=re.escape(message)):
        superres.main(['--ckpt', str(generator_ckpt), '--input', str(npz), '--out', str(tmp_path / 'out'),
                       '--device', 'cpu', *flags])


def test_an_unreadable_input_or_a_missing_fid_reference_stops_before_completing(generator_ckpt, tmp_path, monkeypatch):
    (tmp_path / 'random.npz').write_bytes(np.random.default_rng(0).bytes(3000))
    npz = tmp_path / 'samples_2x32x32x3.npz'
    np.savez(npz, arr_0=np.zeros((2, 32, 32, 3), dtype=np.uint8))
    monkeypatch.setattr(superres, 'complete', lambda *a, **k: pytest.fail('completed despite bad input'))
    for flags, message in ((('--input', tmp_path / 'random.npz'), 'random.npz: not a readable .npz of arrays'),
                           (('--input', npz, '--fid_ref', tmp_path / 'missing.npz'), 'missing.npz: no such file or folder')):
        with pytest.raises(UserError, match=re.escape(message)):
            superres.main(['--ckpt', str(generator_ckpt), '--out', str(tmp_path / 'out'), '--device', 'cpu',
                           *map(str, flags)])
