"""
train_gen.py end to end on CPU: the token file (round trip, refusal of another tokenizer, resumed encoding),
resume == uninterrupted training, torchrun == one process, the NaN stop. Tiny checkpoints are built by
running the real scripts on a few generated images (helpers in conftest.py).
"""
import hashlib
import json
import os

import numpy as np
import pytest
import torch

from PIL import Image

import tokens
from conftest import (N_CLASSES, PER_CLASS, perturb_weights, run, run_together, save_modified_tokenizer, train_gen,
                      train_gen_command)
from data import ImageFolder
from generator import GPT, GPTConfig
from tokenizer import Tokenizer


def read_tokens(path):
    with np.load(path) as f:
        return f['codes'], f['labels'], json.loads(f['meta'].item())


@pytest.fixture(scope='module')
def token_file(tiny_tokenizer, tmp_path_factory):
    data, tok_ckpt = tiny_tokenizer
    path = tmp_path_factory.mktemp('tokens') / 'tokens.npz'
    # chunks of 5 images in batches of 2: the last batch of a chunk is short and the last chunk too
    train_gen(tok_ckpt, path.parent / 'unused', '--data', data, '--tokens', path, '--encode_only',
              '--encode_chunk', 5, '--encode_batch', 2)
    return path


@pytest.fixture(scope='module')
def other_tokenizer(tiny_tokenizer, tmp_path_factory):
    return save_modified_tokenizer(tiny_tokenizer[1], tmp_path_factory.mktemp('other') / 'tok.pt', perturb_weights)


def test_token_file_round_trip(tiny_tokenizer, token_file):
    data, tok_ckpt = tiny_tokenizer
    codes, labels, meta = read_tokens(token_file)
    tok = Tokenizer.from_checkpoint(tok_ckpt)
    dataset = ImageFolder(data, tok.config.image_size)
    x = torch.stack([dataset[i][0] for i in range(len(dataset))]).float() / 127.5 - 1
    expected = torch.stack([tok.encode(x), tok.encode(x.flip(-1))], dim=1).flatten(0, 1)  # rows: image, its flip
    assert codes.dtype == np.uint16 and labels.dtype == np.int16
    assert codes.shape == (2 * N_CLASSES * PER_CLASS, tok.config.n_tokens)
    np.testing.assert_array_equal(codes, expected.numpy())
    np.testing.assert_array_equal(labels, np.repeat(dataset.labels, 2))
    with open(tok_ckpt, 'rb') as f:
        assert meta['tok_sha256'] == hashlib.file_digest(f, 'sha256').hexdigest()
    assert meta['tok_ckpt'] == str(tok_ckpt) and meta['data'] == os.path.realpath(data)
    assert (meta['n_tokens'], meta['codebook_size'], meta['image_size']) == (tok.config.n_tokens, tok.config.codebook_size, 32)
    assert meta['classes'] == ['class0', 'class1', 'class2'] and meta['n_rows'] == len(codes) and meta['n_bad'] == 0
    assert not os.path.exists(f'{token_file}.partial')


def test_token_file_of_another_tokenizer_is_refused(token_file, other_tokenizer, tmp_path):
    before = token_file.read_bytes()
    result = train_gen(other_tokenizer, tmp_path, '--tokens', token_file, '--encode_only', expect_ok=False, in_process=True)
    assert "was made with tokenizer" in result.stderr
    assert f"delete {token_file} to encode again, or pass --tok_ckpt" in result.stderr
    assert token_file.read_bytes() == before


INTERRUPT_AT_IMAGE_5 = """
import runpy, sys
import data
load = data.ImageFolder.__getitem__
def load_or_interrupt(self, i):
    if i == 5:
        raise KeyboardInterrupt  # as if Ctrl-C hit while chunk 2 (images 4, 5) was being encoded
    return load(self, i)
data.ImageFolder.__getitem__ = load_or_interrupt
sys.argv = ['train_gen.py'] + sys.argv[1:]
runpy.run_path('train_gen.py', run_name='__main__')
"""


def test_encoding_resumes_after_interruption(tiny_tokenizer, token_file, other_tokenizer, tmp_path):
    data, tok_ckpt = tiny_tokenizer
    path = tmp_path / 'tokens.npz'
    flags = ('--data', data, '--tokens', path, '--encode_only', '--encode_chunk', 2, '--encode_batch', 1)
    result = run('-c', INTERRUPT_AT_IMAGE_5, '--preset', 'tiny', '--tok_ckpt', tok_ckpt, '--workers', 0, *flags, expect_ok=False)
    assert 'KeyboardInterrupt' in result.stderr
    partial = tmp_path / 'tokens.npz.partial'
    assert sorted(f.name for f in partial.glob('chunk_*')) == ['chunk_000000.npz', 'chunk_000001.npz']
    assert not path.exists()

    result = train_gen(other_tokenizer, tmp_path, *flags, expect_ok=False, in_process=True)
    assert f"delete {partial} to encode again, or pass --tok_ckpt {tok_ckpt}" in result.stderr

    result = train_gen(tok_ckpt, tmp_path, *flags)
    assert 'resuming the encoding' in result.stdout and '2 of 6 chunks already done' in result.stdout
    assert not partial.exists()
    codes, labels, _ = read_tokens(path)
    expected_codes, expected_labels, _ = read_tokens(token_file)
    np.testing.assert_array_equal(codes, expected_codes)
    np.testing.assert_array_equal(labels, expected_labels)


def load_generator(out_dir):
    return torch.load(out_dir / 'ckpt.pt', map_location='cpu', weights_only=True)


def read_records(out_dir):
    with open(out_dir / 'log.jsonl') as f:
        return [json.loads(line) for line in f]


def read_log(out_dir):
    """The training records of a log (evaluation records have no loss)."""
    return [r for r in read_records(out_dir) if 'loss' in r]


def read_evals(out_dir):
    return [r for r in read_records(out_dir) if 'train_nll' in r]


def assert_same_tensors(a, b, exact=True):
    """Nested dicts/lists of tensors (state dicts, optimizer states) are equal (or close)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same_tensors(a[k], b[k], exact)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_tensors(x, y, exact)
    elif torch.is_tensor(a):
        if exact:
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
    else:
        assert a == b


# constant lr after one warmup step, so a run stopped at max_steps 2 has the lr schedule of one to 4
TRAIN_FLAGS = ('--warmup', 1, '--lr_end', 1.0, '--lr', 0.3, '--label_drop', 0.5, '--ema', 0.9)
TORCHRUN = ('-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', 2)  # before a run's argv: 2 processes


@pytest.fixture(scope='module')
def straight_run(tiny_tokenizer, token_file, tmp_path_factory):
    """4 uninterrupted steps: the reference of the resumed run and of the torchrun."""
    out_dir = tmp_path_factory.mktemp('straight')
    train_gen(tiny_tokenizer[1], out_dir, '--tokens', token_file, '--max_steps', 4, *TRAIN_FLAGS)
    return out_dir


def test_resume_equals_uninterrupted_run(tiny_tokenizer, token_file, straight_run, tmp_path):
    tok_ckpt = tiny_tokenizer[1]
    train_gen(tok_ckpt, tmp_path, '--tokens', token_file, '--max_steps', 2, *TRAIN_FLAGS)
    assert load_generator(tmp_path)['step'] == 2
    train_gen(tok_ckpt, tmp_path, '--tokens', token_file, '--max_steps', 4, '--resume', *TRAIN_FLAGS)

    straight, halves = load_generator(straight_run), load_generator(tmp_path)
    assert straight['kind'] == 'generator' and straight['step'] == halves['step'] == 4
    for key in ('model', 'ema', 'optimizer'):
        assert_same_tensors(straight[key], halves[key])
    assert not torch.equal(straight['model']['head.weight'], straight['ema']['head.weight'])
    assert straight['tokenizer']['path'] == str(tok_ckpt) and straight['tokenizer']['config']['n_tokens'] == 8
    assert straight['classes'] == ['class0', 'class1', 'class2'] and straight['config']['num_classes'] == N_CLASSES

    log_straight, log_halves = read_log(straight_run), read_log(tmp_path)
    assert [r['step'] for r in log_straight] == [r['step'] for r in log_halves] == [1, 2, 3, 4]
    for a, b in zip(log_straight, log_halves):
        assert len(a['loss_per_position']) == len(a['acc_per_position']) == 8
        assert all(0 <= acc <= 1 for acc in a['acc_per_position'])
        for key in ('loss_per_position', 'acc_per_position', 'lr'):
            assert a[key] == b[key]


def test_torchrun_matches_one_process(tiny_tokenizer, token_file, straight_run, tmp_path):
    """Two processes on halves of the global batch (and each encoding its share of the chunks) = one process."""
    data, tok_ckpt = tiny_tokenizer
    run(*TORCHRUN, *train_gen_command(tok_ckpt, tmp_path / 'two', '--data', data, '--encode_chunk', 2, '--encode_batch', 2,
                                      '--max_steps', 4, *TRAIN_FLAGS))
    np.testing.assert_array_equal(read_tokens(tmp_path / 'two' / 'tokens.npz')[0], read_tokens(token_file)[0])
    # equal up to float summation order (Adam's normalised steps amplify it a little)
    for key in ('model', 'ema'):
        assert_same_tensors(load_generator(straight_run)[key], load_generator(tmp_path / 'two')[key], exact=False)
    log_one, log_two = read_log(straight_run), read_log(tmp_path / 'two')
    assert [r['step'] for r in log_one] == [r['step'] for r in log_two] == [1, 2, 3, 4]
    for one, two in zip(log_one, log_two):
        assert one['loss'] == pytest.approx(two['loss'], rel=1e-5)


def test_nonfinite_loss_stops_and_keeps_last_checkpoint(tiny_tokenizer, token_file, tmp_path):
    """Two good steps are checkpointed; resumed with an absurd lr, the weights after step 3 give a non-finite loss,
    so the step-2 checkpoint is kept and named; a run that never had good weights names none."""
    train_gen(tiny_tokenizer[1], tmp_path, '--tokens', token_file, '--max_steps', 2)
    flags = ('--tokens', token_file, '--max_steps', 4, '--ckpt_every', 1, '--lr', 1e35)
    resumed, fresh = run_together(train_gen_command(tiny_tokenizer[1], tmp_path, *flags, '--resume'),
                                  train_gen_command(tiny_tokenizer[1], tmp_path / 'fresh', *flags, '--warmup', 1),
                                  expect_ok=False)
    assert 'non-finite loss or weights at or before step 3' in resumed.stderr and 'is intact' in resumed.stderr
    kept = load_generator(tmp_path)
    assert kept['step'] == 2 and all(torch.isfinite(p).all() for p in kept['model'].values())
    assert [r['step'] for r in read_log(tmp_path)] == [1, 2, 3]
    assert 'no checkpoint was written yet' in fresh.stderr and not (tmp_path / 'fresh' / 'ckpt.pt').exists()


def test_token_file_with_out_of_range_codes_is_refused(tiny_tokenizer, token_file, tmp_path):
    with np.load(token_file) as f:
        arrays = dict(f)
    arrays['codes'][3, 0] = 64  # K = 64
    np.savez(tmp_path / 'tokens.npz', **arrays)
    result = train_gen(tiny_tokenizer[1], tmp_path, '--tokens', tmp_path / 'tokens.npz', '--max_steps', 1, expect_ok=False,
                       in_process=True)
    assert 'holds codes outside 0..63 or labels outside 0..2' in result.stderr and 'delete it to encode again' in result.stderr
    result = train_gen(tiny_tokenizer[1], tmp_path / 'val', '--tokens', token_file, '--val_tokens', tmp_path / 'tokens.npz',
                       '--max_steps', 1, expect_ok=False, in_process=True)
    assert f"{str(tmp_path / 'tokens.npz')!r} holds codes outside 0..63" in result.stderr


@pytest.fixture(scope='module')
def val_folder(tmp_path_factory):
    """Held-out images: the training folder's classes, other pixels."""
    root = tmp_path_factory.mktemp('val')
    rng = np.random.default_rng(1)
    for c in range(N_CLASSES):
        os.makedirs(root / f'class{c}')
        for i in range(2):
            img = rng.integers(0, 120, (32, 32, 3))
            img[..., c] += 120
            Image.fromarray(img.astype(np.uint8)).save(root / f'class{c}' / f'{i}.png')
    return root


def hand_nll_per_position(gpt, codes, labels):
    """-log p(t_i | t_<i, class) of every row, each position from its own forward pass over the prefix
    (float64 log-softmax), averaged over rows."""
    idx, labels = torch.from_numpy(codes.astype(np.int64)), torch.from_numpy(labels.astype(np.int64))
    with torch.no_grad():
        nll = [-gpt(idx[:, :i + 1], labels)[:, i].double().log_softmax(-1).gather(1, idx[:, i:i + 1])[:, 0]
               for i in range(idx.shape[1])]
    return torch.stack(nll, 1).mean(0).numpy()


def test_validation_nll_scores_validation_rows_in_eval_mode(tiny_tokenizer, token_file, val_folder, tmp_path):
    """With dropout 0.5, an evaluation in training mode would not match the hand computation, nor would one
    that scored training rows."""
    train_gen(tiny_tokenizer[1], tmp_path, '--tokens', token_file, '--val_data', val_folder, '--dropout', 0.5,
              '--max_steps', 3, '--eval_every', 1, '--ckpt_every', 3, *TRAIN_FLAGS[:-2])
    final = read_evals(tmp_path)[-1]
    ckpt = load_generator(tmp_path)
    assert final['step'] == ckpt['step'] == 3 and ckpt['config']['dropout'] == 0.5
    gpt = GPT(GPTConfig(**ckpt['config']))
    gpt.load_state_dict(ckpt['model'])
    gpt.eval()
    val_codes, val_labels, val_meta = read_tokens(tmp_path / 'val_tokens.npz')
    assert val_meta['views'] == 1 and len(val_codes) == 2 * N_CLASSES
    expected = hand_nll_per_position(gpt, val_codes, val_labels)
    np.testing.assert_allclose(final['val_nll_per_position'], expected, rtol=1e-4, atol=1e-4)
    assert final['val_nll'] == pytest.approx(expected.sum(), rel=1e-5)
    train_codes, train_labels, _ = read_tokens(token_file)  # every training image's view 0: rows 0, 2, 4, ...
    expected_train = hand_nll_per_position(gpt, train_codes[::2], train_labels[::2])
    assert final['train_nll'] == pytest.approx(expected_train.sum(), rel=1e-5)
    assert final['val_over_train'] == pytest.approx(final['val_nll'] / final['train_nll'])
    assert ckpt['val_nll'] == final['val_nll']
    assert (tmp_path / 'nll.png').exists()


def test_best_checkpoint_is_replaced_only_by_a_lower_validation_nll(tiny_tokenizer, token_file, val_folder, tmp_path):
    train_gen(tiny_tokenizer[1], tmp_path, '--tokens', token_file, '--val_data', val_folder, '--max_steps', 8,
              '--eval_every', 1, '--warmup', 1, '--lr_end', 1.0, '--lr', 3.0)
    val = [r['val_nll'] for r in read_evals(tmp_path)]
    assert len(val) == 8 and any(b > a for a, b in zip(val, val[1:])), f'the NLL never rose, nothing to test: {val}'
    best = torch.load(tmp_path / 'best.pt', map_location='cpu', weights_only=True)
    assert best['val_nll'] == min(val) and best['step'] == 1 + val.index(min(val))
    assert best['best_val_nll'] == min(val)


def test_augmented_token_file_holds_k_views_and_a_rerun_reuses_it(tiny_tokenizer, tmp_path):
    data, tok_ckpt = tiny_tokenizer
    path = tmp_path / 'tokens.npz'
    flags = ('--data', data, '--tokens', path, '--encode_only', '--augment', 4, '--augment_scale', 0.5)
    train_gen(tok_ckpt, tmp_path, *flags)
    codes, labels, meta = read_tokens(path)
    assert meta['views'] == 4 and meta['augment_scale'] == 0.5 and codes.shape[0] == 4 * N_CLASSES * PER_CLASS
    np.testing.assert_array_equal(labels, np.repeat(ImageFolder(data, 32).labels, 4))

    tok = Tokenizer.from_checkpoint(tok_ckpt)
    dataset = ImageFolder(data, tok.config.image_size)
    x = torch.stack([dataset[i][0] for i in range(len(dataset))]).float() / 127.5 - 1
    params = torch.from_numpy(np.stack([tokens.view_params(i, 4, 0.5, seed=0) for i in range(len(dataset))]))
    views = tokens.make_views(x, params).view(len(dataset), 4, *x.shape[1:])
    torch.testing.assert_close(views[:, 0], x, rtol=0, atol=0)
    torch.testing.assert_close(views[:, 1], x.flip(-1), rtol=0, atol=0)
    for a in range(4):  # four different images of every image
        for b in range(a):
            assert (views[:, a] - views[:, b]).abs().flatten(1).amax(1).min() > 0.05
    np.testing.assert_array_equal(codes, tok.encode(views.flatten(0, 1)).numpy())

    before = path.stat().st_mtime_ns
    result = train_gen(tok_ckpt, tmp_path, *flags, in_process=True)
    assert 'encode' not in result.stderr and 'wrote' not in result.stdout and path.stat().st_mtime_ns == before
    result = train_gen(tok_ckpt, tmp_path, *flags[:-4], '--augment', 2, expect_ok=False, in_process=True)
    assert 'holds 4 view(s) per image, not 2' in result.stderr and '--augment 4' in result.stderr


def test_tokens_per_step_is_trained_resumed_and_sampled(tiny_tokenizer, token_file, tmp_path):
    """--tokens_per_step 4 (N = 8: two groups) reaches the checkpoint's config, a resume keeps it and refuses
    another, sample.py samples the grouped model, and a P that does not divide N stops with the divisors."""
    tok_ckpt = tiny_tokenizer[1]
    train_gen(tok_ckpt, tmp_path, '--tokens', token_file, '--max_steps', 2, '--tokens_per_step', 4, *TRAIN_FLAGS)
    assert load_generator(tmp_path)['config']['tokens_per_step'] == 4
    train_gen(tok_ckpt, tmp_path, '--tokens', token_file, '--max_steps', 3, '--resume', *TRAIN_FLAGS)
    assert load_generator(tmp_path)['config']['tokens_per_step'] == 4
    refused = train_gen(tok_ckpt, tmp_path, '--tokens', token_file, '--max_steps', 4, '--resume', '--tokens_per_step', 2,
                        *TRAIN_FLAGS, expect_ok=False, in_process=True)
    assert '--tokens_per_step 2 contradicts the checkpoint, which was trained with --tokens_per_step 4' in refused.stderr
    run('sample.py', '--ckpt', tmp_path / 'ckpt.pt', '--out', tmp_path / 'samples', '--classes', '0,1', '--per_class', 2,
        '--truncate', 1)
    with np.load(tmp_path / 'samples' / 'samples_4x32x32x3.npz') as f:
        assert f['arr_0'].shape == (4, 32, 32, 3)
    bad = train_gen(tok_ckpt, tmp_path / 'bad', '--tokens', token_file, '--max_steps', 1, '--tokens_per_step', 3,
                    expect_ok=False, in_process=True)
    assert '--tokens_per_step: tokens_per_step=3 must divide n_tokens=8: use one of [1, 2, 4, 8]' in bad.stderr


def test_two_processes_equal_one_with_grad_accum_2_and_resume_across_them(tiny_tokenizer, token_file, tmp_path):
    """The global batch of 8 as 2 processes x 4 rows or as 1 process x 2 micro-batches of 4, with dropout and drop
    path: their masks follow a row's place in the global batch, so both draw the same. A run checkpointed on 2
    processes continues on 1 with --grad_accum 2 as the 1-process run did (the same data, labels and masks)."""
    tok_ckpt = tiny_tokenizer[1]
    flags = ('--tokens', token_file, '--dropout', 0.2, '--drop_path', 0.3, '--ckpt_every', 2, *TRAIN_FLAGS)
    run_together(train_gen_command(tok_ckpt, tmp_path / 'accum', *flags, '--max_steps', 4, '--grad_accum', 2, '--keep', 1),
                 (*TORCHRUN, *train_gen_command(tok_ckpt, tmp_path / 'moved', *flags, '--max_steps', 2)))
    assert sorted(f.name for f in (tmp_path / 'accum').glob('ckpt*')) == ['ckpt.pt', 'ckpt_0000004.pt']
    train_gen(tok_ckpt, tmp_path / 'moved', *flags, '--max_steps', 4, '--grad_accum', 2, '--resume')
    for key in ('model', 'ema'):
        assert_same_tensors(load_generator(tmp_path / 'accum')[key], load_generator(tmp_path / 'moved')[key], exact=False)
    log_accum, log_moved = read_log(tmp_path / 'accum'), read_log(tmp_path / 'moved')
    assert [r['step'] for r in log_accum] == [r['step'] for r in log_moved] == [1, 2, 3, 4]
    for a, b in zip(log_accum, log_moved):
        assert a['loss'] == pytest.approx(b['loss'], rel=1e-5) and a['grad_norm'] == pytest.approx(b['grad_norm'], rel=1e-4)


def test_resume_at_max_steps_says_so(tiny_tokenizer, token_file, straight_run, tmp_path):
    result = train_gen(tiny_tokenizer[1], tmp_path, '--tokens', token_file, '--max_steps', 4,
                       '--resume', straight_run / 'ckpt.pt', in_process=True)
    assert 'it has reached --max_steps 4: raise --max_steps to train further' in result.stdout


def truncated_copy(path, tmp_path):
    data = path.read_bytes()
    (tmp_path / 'truncated.npz').write_bytes(data[:len(data) // 2])
    return tmp_path / 'truncated.npz'


@pytest.mark.parametrize('flags, message', [
    (('--label_drop', 1.5), '--label_drop 1.5: a probability of the null class'),
    (('--batch_size', 16), "--batch_size 16 is larger than the data set's 12 images: pass --batch_size 12 or less"),
    (('--tokens', truncated_copy), "truncated.npz' is truncated or not a token file (BadZipFile"),
])
def test_bad_flags_and_files_stop_with_one_line_and_exit_status_2(tiny_tokenizer, token_file, tmp_path, flags, message):
    flag, value = flags
    value = value(token_file, tmp_path) if callable(value) else value
    extra = () if flag == '--tokens' else ('--tokens', token_file)
    result = train_gen(tiny_tokenizer[1], tmp_path / 'out', *extra, flag, value, '--max_steps', 1, expect_ok=False,
                       in_process=True)
    assert result.returncode == 2 and 'Traceback' not in result.stderr, result.stderr
    assert result.stderr.startswith('train_gen.py: error: ') and message in result.stderr, result.stderr


def test_preset_follows_the_tokenizer_and_a_warmup_longer_than_the_run_is_refused(tiny_tokenizer, token_file, tmp_path):
    result = run('train_gen.py', '--tok_ckpt', tiny_tokenizer[1], '--tokens', token_file, '--out_dir', tmp_path,
                 '--batch_size', 8, '--max_steps', 2, '--warmup', 5, expect_ok=False, in_process=True)
    assert 'no --preset given: cifar_d8, the preset for 32 px tokenizers' in result.stdout
    assert '--warmup 5 is longer than --max_steps 2: the lr would never reach its peak; pass --warmup 1' in result.stderr


def test_flat_validation_folder_is_refused_before_any_encoding(tiny_tokenizer, tmp_path):
    data, tok_ckpt = tiny_tokenizer
    os.makedirs(tmp_path / 'val')
    for image in (data / 'class0').iterdir():  # one folder of images, as ImageNet's validation set ships
        os.link(image, tmp_path / 'val' / image.name)
    message = train_gen(tok_ckpt, tmp_path / 'out', '--data', data, '--val_data', tmp_path / 'val', expect_ok=False,
                        in_process=True).stderr
    assert f"--val_data {str(tmp_path / 'val')!r} has no class folders, the training data has {N_CLASSES}: sort" in message
    assert 'imagenet/extract_ILSVRC.sh of github.com/pytorch/examples' in message
    assert not list((tmp_path / 'out').glob('*tokens*'))  # nothing encoded
