"""sample.py end to end on tiny checkpoints built by the real trainers: outputs, seeding, bad inputs."""
import dataclasses
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from common import UserError
from conftest import perturb_weights, run, run_together, save_modified_tokenizer
from tokenizer import TokConfig, Tokenizer

N_TOKENS, IMAGE_SIZE = 8, 32  # the tiny tokenizer preset


def sample_command(ckpt, out, *extra):
    return 'sample.py', '--ckpt', ckpt, '--out', out, *extra


def sample(ckpt, out, *extra, expect_ok=True, in_process=False):
    return run(*sample_command(ckpt, out, *extra), expect_ok=expect_ok, in_process=in_process)


def read_samples(out_dir, n):
    with np.load(out_dir / f'samples_{n}x{IMAGE_SIZE}x{IMAGE_SIZE}x3.npz') as f:
        return f['arr_0'], f['labels']


def test_outputs(generator_ckpt, tmp_path):
    sample(generator_ckpt, tmp_path, '--classes', 'class0,2', '--per_class', 3, '--batch_size', 4, '--png',
           '--truncate', 1, '--progressive', 2, '--cfg', 2.0, '--cfg_ramp', '--top_k', 5, '--top_p', 0.9)
    images, labels = read_samples(tmp_path, 6)
    assert images.dtype == np.uint8 and images.shape == (6, IMAGE_SIZE, IMAGE_SIZE, 3)
    assert labels.tolist() == [0, 0, 0, 2, 2, 2]
    pngs = sorted(p.name for p in (tmp_path / 'png').iterdir())
    assert pngs == ['000000_0.png', '000001_0.png', '000002_0.png', '000003_2.png', '000004_2.png', '000005_2.png']
    assert np.array_equal(np.asarray(Image.open(tmp_path / 'png' / '000004_2.png')), images[4])
    cell = IMAGE_SIZE + 2  # save_grid pads by 2 pixels
    grid = np.asarray(Image.open(tmp_path / 'grid.png').convert('L'))
    margin = grid.shape[1] - (3 * cell + 2)  # 2 classes x 3 samples, right of the rows' labels
    assert grid.shape[0] == 2 * cell + 2 and margin > 0
    assert all((grid[2 + row * cell:(row + 1) * cell, :margin] < 128).any() for row in range(2))  # each row's label
    # 2 samples x their prefixes of 1 .. N - 1 tokens
    assert Image.open(tmp_path / 'progressive.png').size == ((N_TOKENS - 1) * cell + 2, 2 * cell + 2)
    record = json.loads((tmp_path / 'sample_args.json').read_text())
    assert record['n'] == 6 and record['top_p'] == 0.9 and record['sampling_s'] > 0
    assert record['images_per_s'] == pytest.approx(6 / record['sampling_s'])


def test_same_seed_same_images(generator_ckpt, tmp_path):
    flags = ('--classes', 'all', '--per_class', 4, '--batch_size', 5, '--top_k', 20, '--progressive')
    run_together(*(sample_command(generator_ckpt, tmp_path / name, '--seed', seed, *flags)
                   for name, seed in (('a', 0), ('b', 0), ('c', 1))))
    a, b, c = (read_samples(tmp_path / name, 12)[0] for name in 'abc')
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    cell = IMAGE_SIZE + 2
    assert Image.open(tmp_path / 'a' / 'progressive.png').size == (N_TOKENS * cell + 2, 4 * cell + 2)  # bare flag: 4


@pytest.fixture(scope='module')
def bad_tokenizers(tiny_tokenizer, tmp_path_factory):
    """A tokenizer with other weights (same N, K) and one with N = 4 tokens."""
    root = tmp_path_factory.mktemp('bad_tok')

    def four_tokens(ckpt):
        tok_config = TokConfig(**{**ckpt['config'], 'n_tokens': 4})
        ckpt['config'] = dataclasses.asdict(tok_config)
        ckpt['model'] = ckpt['ema'] = Tokenizer(tok_config).state_dict()

    return (save_modified_tokenizer(tiny_tokenizer[1], root / 'other_weights.pt', perturb_weights),
            save_modified_tokenizer(tiny_tokenizer[1], root / 'four_tokens.pt', four_tokens))


def test_bad_inputs_name_the_fix(tiny_tokenizer, generator_ckpt, bad_tokenizers, tmp_path):
    tok_ckpt = tiny_tokenizer[1]
    other_weights, four_tokens = bad_tokenizers

    def error(ckpt, out, *extra):
        """sample.py's exit message, run in this process: no second torch start-up per bad input."""
        result = sample(ckpt, out, *extra, expect_ok=False, in_process=True)
        assert result.returncode == 2 and result.stderr.startswith('sample.py: error: '), result.stderr
        return result.stderr

    message = error(tok_ckpt, tmp_path)
    assert 'is a tokenizer checkpoint, expected a generator checkpoint' in message and 'pass --tok_ckpt' in message
    assert 'does not exist' in error(tmp_path / 'missing.pt', tmp_path)
    assert 'does not exist' in error(generator_ckpt, tmp_path, '--tok_ckpt', tmp_path / 'missing.pt')

    moved = torch.load(generator_ckpt, map_location='cpu', weights_only=True)
    moved['tokenizer']['path'] = str(tmp_path / 'moved' / 'tok.pt')
    torch.save(moved, tmp_path / 'moved_tok.pt')
    message = error(tmp_path / 'moved_tok.pt', tmp_path)
    assert f"tokenizer checkpoint {str(tmp_path / 'moved' / 'tok.pt')!r} named by" in message
    assert 'does not exist: pass --tok_ckpt with the tokenizer the generator was trained on' in message

    message = error(generator_ckpt, tmp_path, '--tok_ckpt', four_tokens)
    assert 'has N=4 tokens and K=64 codes, but the generator' in message and 'trained on N=8, K=64' in message
    assert f'pass --tok_ckpt {tok_ckpt}' in message
    message = error(generator_ckpt, tmp_path, '--tok_ckpt', other_weights)
    assert 'is not the checkpoint the generator was trained on' in message and 'pass that one as --tok_ckpt' in message

    message = error(generator_ckpt, tmp_path, '--classes', '0,3,dog')
    assert '--classes: 3, dog is no class of this generator, whose 3 classes are, by id and name: 0 class0, 1 class1, 2 class2' in message
    assert 'must keep at least one of the N=8 tokens' in error(generator_ckpt, tmp_path, '--truncate', 8)
    assert not list(tmp_path.glob('*.npz'))


@pytest.fixture
def unwritable_dir(tmp_path):
    """A folder that takes no files: read-only, or where that binds no one (root), /proc/self."""
    folder = tmp_path / 'read_only'
    folder.mkdir()
    folder.chmod(0o500)
    try:
        (folder / 'probe').write_bytes(b'')
    except OSError:
        return folder
    if not os.path.isdir('/proc/self'):
        pytest.skip('no way to make an unwritable folder here')
    return '/proc/self'


def test_nonfinite_cfg_and_unwritable_out_stop_before_sampling(generator_ckpt, tmp_path, unwritable_dir, monkeypatch):
    import sample as sample_module

    def no_sampling(*args, **kwargs):
        raise AssertionError('sampled although the settings were bad')
    monkeypatch.setattr(sample_module, 'sample_batches', no_sampling)
    for cfg_scale in ('nan', 'inf', '-inf'):
        with pytest.raises(UserError, match=f'--cfg {cfg_scale}: out of range, use a finite guidance scale'):
            sample_module.main(['--ckpt', str(generator_ckpt), '--out', str(tmp_path), f'--cfg={cfg_scale}', '--per_class', '1'])
    with pytest.raises(UserError, match=f"--out: '{unwritable_dir}' is not a writable folder"):
        sample_module.main(['--ckpt', str(generator_ckpt), '--out', str(unwritable_dir), '--per_class', '1'])
    (tmp_path / 'a_file').write_bytes(b'')
    with pytest.raises(UserError, match="--out: .*a_file' is not a writable folder"):
        sample_module.main(['--ckpt', str(generator_ckpt), '--out', str(tmp_path / 'a_file'), '--per_class', '1'])


def nan_weights(ckpt):
    for weights in (ckpt['model'], ckpt['ema']):
        weights['tok_emb.weight'] = torch.full_like(weights['tok_emb.weight'], float('nan'))


def test_a_generator_of_nan_weights_is_refused_not_sampled(generator_ckpt, tmp_path):
    import sample as sample_module
    nan_ckpt = save_modified_tokenizer(generator_ckpt, tmp_path / 'nan.pt', nan_weights)
    with pytest.raises(UserError, match=r"--ckpt: .*nan.pt' holds non-finite \(NaN or inf\) weights"):
        sample_module.main(['--ckpt', str(nan_ckpt), '--out', str(tmp_path / 'out'), '--per_class', '1'])
    assert not (tmp_path / 'out').exists() or not list((tmp_path / 'out').iterdir())


def test_sample_batches_itself_refuses_a_nan_guidance_scale(generator_ckpt):
    import sample as sample_module
    gpt, tok, _ = sample_module.load_models(str(generator_ckpt))
    with pytest.raises(UserError, match='--cfg nan: out of range'):
        list(sample_module.sample_batches(gpt, tok, np.zeros(2, np.int64), 2, 0, N_TOKENS, cfg_scale=float('nan')))


def test_a_full_disk_while_writing_pngs_keeps_each_png_whole_and_names_the_one_it_stopped_at(generator_ckpt, tmp_path,
                                                                                              monkeypatch):
    import common
    import sample as sample_module

    def open_onto_a_full_disk_from_the_third_png(name, mode):
        return open('/dev/full' if '000002_' in str(name) else name, mode)
    monkeypatch.setattr(common, 'open', open_onto_a_full_disk_from_the_third_png, raising=False)
    with pytest.raises(UserError, match=r"no space left on the device while writing .*png/000002_0.png'"):
        sample_module.main(['--ckpt', str(generator_ckpt), '--out', str(tmp_path), '--classes', '0', '--per_class', '4',
                            '--png'])
    assert sorted(p.name for p in (tmp_path / 'png').iterdir()) == ['000000_0.png', '000001_0.png']
    for png in (tmp_path / 'png').iterdir():
        assert Image.open(png).size == (IMAGE_SIZE, IMAGE_SIZE)  # whole, not truncated
    assert not list(tmp_path.glob('*.npz'))


@pytest.mark.parametrize('flags, message', [
    (('--per_class', 10 ** 12), r'--per_class: 3,000,000,000,000 samples need .* GiB of memory .*: lower --per_class'),
    (('--per_class', 3, '--batch_size', 2, '--progressive', 100),
     r'--progressive 100: the strips show samples of the first batch, here 2: pass --progressive 2 or less'),
])
def test_settings_that_cannot_be_met_stop_before_sampling(generator_ckpt, tmp_path, monkeypatch, flags, message):
    import sample as sample_module
    monkeypatch.setattr(sample_module, 'sample_batches', lambda *a, **k: pytest.fail('sampled'))
    with pytest.raises(UserError, match=message):
        sample_module.main(['--ckpt', str(generator_ckpt), '--out', str(tmp_path), *map(str, flags)])


def test_memorisation_of_truncated_samples_is_reported_over_the_tokens_they_keep(generator_ckpt, tmp_path, capsys):
    import sample as sample_module
    sample_module.main(['--ckpt', str(generator_ckpt), '--out', str(tmp_path), '--per_class', '1', '--truncate', '5'])
    copied = [line for line in capsys.readouterr().out.splitlines() if line.startswith('copied from a training row:')]
    assert len(copied) == 1 and copied[0].startswith('copied from a training row: first 3 tokens ')


@pytest.mark.skipif(torch.cuda.is_available(), reason='CUDA is available here')
def test_device_cuda_without_cuda_names_the_fix(generator_ckpt, tmp_path):
    import sample as sample_module
    with pytest.raises(UserError, match='--device cuda: CUDA is not available .*use --device cpu'):
        sample_module.main(['--ckpt', str(generator_ckpt), '--out', str(tmp_path), '--device', 'cuda'])
