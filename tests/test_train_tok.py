"""train_tok.py end to end on a few real images: resume, DDP, bad files, NaN stop, wrong checkpoints."""
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from PIL import Image

import common
from conftest import REPO, run, run_together
from data import ImageFolder, to_float
from sample import is_tokenizer_file
from tokenizer import ENCODER_SIDE, Tokenizer
from test_vqgan import save_random_vqgan


@pytest.fixture(scope='module')
def image_dir(tmp_path_factory, cifar_sample_dir):
    """24 real CIFAR-10 test images in 3 class folders."""
    root = tmp_path_factory.mktemp('images')
    for cls in ('airplane', 'cat', 'ship'):
        os.makedirs(root / cls)
        for f in sorted(os.listdir(cifar_sample_dir / cls))[:8]:
            shutil.copy(cifar_sample_dir / cls / f, root / cls / f)
    return root


def command(data, out, *extra, nproc=1):
    """The argv of a small train_tok.py run, under torchrun with nproc > 1."""
    launcher = ('-m', 'torch.distributed.run', '--nproc_per_node', nproc, '--standalone') if nproc > 1 else ()
    return (*launcher, 'train_tok.py', '--preset', 'tiny', '--data', data, '--out_dir', out, '--batch_size', 8,
            '--workers', 0, '--lpips_weight', 0, '--disc_start', 2, '--warmup', 0, '--min_lr', 1e-4, '--restart_every', 2,
            '--log_every', 1, '--sample_every', 100, '--device', 'cpu', *extra)


def train(data, out, *extra, nproc=1, expect_ok=True):
    return run(*command(data, out, *extra, nproc=nproc), expect_ok=expect_ok)


def refused(data, out, *extra):
    """The result of a run that stops before its first step, run in this process (conftest.run_in_process)."""
    return run(*command(data, out, *extra), expect_ok=False, in_process=True)


def weights(out):
    """out: a run's folder (its ckpt.pt) or a checkpoint file."""
    ckpt = torch.load(out if str(out).endswith('.pt') else os.path.join(out, 'ckpt.pt'), weights_only=True)
    return ckpt, {**{f'model.{k}': v for k, v in ckpt['model'].items()}, **{f'ema.{k}': v for k, v in ckpt['ema'].items()},
                  **{f'disc.{k}': v for k, v in ckpt['disc'].items()}}


@pytest.fixture(scope='module')
def two_steps(image_dir, tmp_path_factory):
    """A run of 2 steps (dead codes restarted at step 2) scored at its end on image_dir, 8 images at the prefixes < N
    (eval.jsonl, recon.npz): tests read it, and resume or rescore a copy_of it."""
    out = tmp_path_factory.mktemp('two_steps')
    train(image_dir, out, '--max_steps', '2', '--eval_data', image_dir, '--eval_prefix_images', '8',
          '--eval_npz', out / 'recon.npz')
    return out


def copy_of(run_dir, tmp_path, name='out'):
    return shutil.copytree(run_dir, tmp_path / name)


def test_kill_and_resume_equals_an_uninterrupted_run(image_dir, tmp_path):
    run_together(command(image_dir, tmp_path / 'straight', '--max_steps', '6'),
                 command(image_dir, tmp_path / 'resumed', '--max_steps', '3'))
    train(image_dir, tmp_path / 'resumed', '--max_steps', '6', '--resume')
    (a, wa), (b, wb) = weights(tmp_path / 'straight'), weights(tmp_path / 'resumed')
    assert a['step'] == b['step'] == 6
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert a['optimizer']['state'].keys() == b['optimizer']['state'].keys()


def test_a_run_in_pieces_equals_the_whole_run_and_raising_max_steps_does_not(image_dir, tmp_path):
    # a decaying learning rate (min_lr 1e-6, not train()'s constant 1e-4): the schedule is what pieces could break
    decay = ('--min_lr', '1e-6', '--eval_data', str(image_dir), '--eval_prefix_images', '8')
    _, piece, _ = run_together(command(image_dir, tmp_path / 'whole', '--max_steps', '6', *decay),
                               command(image_dir, tmp_path / 'pieces', '--max_steps', '6', '--steps_this_run', '4', *decay),
                               command(image_dir, tmp_path / 'raised', '--max_steps', '4', *decay))  # then raised to 6
    assert torch.load(tmp_path / 'pieces' / 'ckpt.pt', weights_only=True)['step'] == 4
    assert 'stopped at step 4 of --max_steps 6 (--steps_this_run 4): continue with --resume, which scores --eval_data' in piece.stdout
    assert not (tmp_path / 'pieces' / 'eval.jsonl').exists()  # scored once, at the end
    last, raised = run_together(
        command(image_dir, tmp_path / 'pieces', '--max_steps', '6', '--steps_this_run', '4', '--resume', *decay),
        command(image_dir, tmp_path / 'raised', '--max_steps', '6', '--resume', *decay))
    assert 'stopped at' not in last.stdout and (tmp_path / 'pieces' / 'eval.jsonl').exists()
    (a, wa), (b, wb) = weights(tmp_path / 'whole'), weights(tmp_path / 'pieces')
    assert a['step'] == b['step'] == 6
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k

    assert '--max_steps 4 -> 6: the learning rate\'s cosine now ends at step 6' in raised.stdout
    assert any(not torch.equal(wa[k], w) for k, w in weights(tmp_path / 'raised')[1].items())


def test_ddp_on_two_processes_matches_one_process_on_the_same_global_batch(image_dir, tmp_path):
    # the code-usage counts accumulate per rank and the checkpoint holds their sum, which a broadcast of
    # rank 0's buffers before each forward (DDP's default) would corrupt
    # (restarts at step 3: the counts of steps 4-5 are in the checkpoint)
    _, two = run_together(command(image_dir, tmp_path / 'one', '--max_steps', '5', '--restart_every', '3'),
                          command(image_dir, tmp_path / 'two', '--max_steps', '5', '--restart_every', '3', nproc=2))
    assert 'FutureWarning' not in two.stderr  # DDP's deprecated broadcast_buffers, once per process
    (_, w1), (_, w2) = weights(tmp_path / 'one'), weights(tmp_path / 'two')
    assert w1['model.quantizer.usage'].sum() > 0
    for k in w1:
        # Adam turns rounding noise in near-zero gradients into steps of up to lr (1e-4): allow one for the
        # discriminator, whose gradients are the smallest, and half of one for the tokenizer (measured: 1.6e-5
        # after 5 steps); ranks that saw the wrong images would be off by ~lr per step everywhere
        atol = 1e-4 if k.startswith('disc.') else 5e-5
        torch.testing.assert_close(w1[k], w2[k], rtol=1e-4, atol=atol, msg=k)


def start(data, out, *flags, expect_ok=True, in_process=False):
    """train_tok.py with only the given flags and those that keep it small (no --preset, no --warmup)."""
    return run('train_tok.py', '--data', data, '--out_dir', out, '--batch_size', 8, '--lpips_weight', 0, '--gan_weight', 0,
               '--log_every', 1, '--sample_every', 0, *flags, expect_ok=expect_ok, in_process=in_process)


def test_preset_follows_the_image_size_and_other_sizes_are_told_the_presets(image_dir, tmp_path):
    large, small = tmp_path / 'large', tmp_path / 'small'
    for folder, size in ((large, (300, 260)), (small, (64, 64))):
        os.makedirs(folder)
        for i in range(2):
            Image.new('RGB', size, (40 * i, 90, 200)).save(folder / f'{i}.png')
    # each run stops at the check of --warmup, after its preset is chosen and before any training
    for folder, preset in ((image_dir, 'cifar'), (large, 'titok_b64')):
        result = start(folder, tmp_path / preset, '--max_steps', 1, '--warmup', 2, expect_ok=False, in_process=True)
        assert f"no --preset given: {preset}, the preset for" in result.stdout, result.stdout + result.stderr
    message = start(small, tmp_path / 'small_out', '--max_steps', 1, expect_ok=False, in_process=True).stderr
    assert 'short sides of 64 to 64 px) fit no preset by size: pass --preset cifar (32 px), titok_b64 (256 px) or tiny' in message


def test_default_warmup_is_a_tenth_of_a_short_run_and_a_longer_warmup_is_refused(image_dir, tmp_path):
    result = start(image_dir, tmp_path / 'short', '--preset', 'tiny', '--max_steps', 20, '--lr', 1e-3)
    assert 'warmup over 2 steps, a tenth of --max_steps 20' in result.stdout
    assert 'Warning' not in result.stderr  # at the default --workers, none from DataLoader about the cores
    assert read_log(tmp_path / 'short')[1]['lr'] == pytest.approx(1e-3)  # the peak at step 2, not 2e-7 of 10,000 steps
    message = start(image_dir, tmp_path / 'long', '--preset', 'tiny', '--max_steps', 20, '--warmup', 30, expect_ok=False,
                    in_process=True).stderr
    assert '--warmup 30 is longer than --max_steps 20: the lr would never reach its peak; pass --warmup 2' in message


def test_a_run_resumed_on_two_processes_counts_each_code_use_once(image_dir, tmp_path):
    # DDP copies rank 0's buffers to every rank once, at its start: rank 0 holds the checkpoint's sum over the ranks,
    # which the other ranks must not count again
    flags = ('--restart_every', '0', '--ckpt_every', '2')
    train(image_dir, tmp_path / 'out', *flags, '--max_steps', '2', nproc=2)
    train(image_dir, tmp_path / 'out', *flags, '--max_steps', '4', '--resume', nproc=2)
    ckpt, w = weights(tmp_path / 'out')
    assert ckpt['step'] == 4 and w['model.quantizer.usage'].sum() == 4 * 8 * 8  # steps x batch x N tokens


def test_bad_images_are_skipped_and_counted(image_dir, tmp_path):
    data = tmp_path / 'data'
    shutil.copytree(image_dir, data)
    (data / 'cat' / 'truncated.jpg').write_bytes((data / 'cat' / sorted(os.listdir(data / 'cat'))[0]).read_bytes()[:100])
    (data / 'ship' / 'not_an_image.png').write_bytes(b'hello')
    train(data, tmp_path / 'out', '--max_steps', '2', '--batch_size', '13')  # one epoch: each bad file once
    logs = [json.loads(line) for line in open(tmp_path / 'out' / 'log.jsonl')]
    assert logs[-1]['bad_images_skipped'] == 2


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(image_dir, two_steps, tmp_path):
    out = copy_of(two_steps, tmp_path)
    good = torch.load(out / 'ckpt.pt', weights_only=True)
    result = train(image_dir, out, '--max_steps', '40', '--ckpt_every', '2', '--resume', '--lr', '1e30', expect_ok=False)
    assert 'non-finite loss' in result.stderr + result.stdout
    kept = torch.load(out / 'ckpt.pt', weights_only=True)
    assert kept['step'] == good['step'] == 2
    assert all(torch.isfinite(v).all() for v in kept['model'].values() if v.is_floating_point())


def test_mismatched_resume_settings_and_wrong_checkpoints_stop_with_a_fix(image_dir, two_steps, tmp_path):
    result = refused(image_dir, copy_of(two_steps, tmp_path), '--max_steps', '3', '--resume', '--n_tokens', '4')
    assert '--n_tokens 4 contradicts the checkpoint, which was trained with --n_tokens 8' in result.stderr
    torch.save({'kind': 'generator'}, tmp_path / 'gen.pt')
    result = refused(image_dir, tmp_path / 'out2', '--resume', str(tmp_path / 'gen.pt'))
    assert 'is a generator checkpoint, expected a tokenizer checkpoint' in result.stderr


def test_batch_without_readable_image_is_skipped_and_counted(image_dir, tmp_path):
    data = tmp_path / 'data'
    shutil.copytree(image_dir, data)
    for cls in ('airplane', 'cat', 'ship'):
        for i in range(40):
            (data / cls / f'empty_{i}.jpg').write_bytes(b'')  # 24 readable of 144; some preview picks are empty too
    # --grad_accum 2: a batch of one readable image also leaves a micro-batch without any
    train(data, tmp_path / 'out', '--max_steps', '8', '--batch_size', '4', '--grad_accum', '2', '--gan_weight', '0')
    logs = [json.loads(line) for line in open(tmp_path / 'out' / 'log.jsonl')]
    assert [r['step'] for r in logs] == list(range(1, 9))
    assert logs[-1]['empty_batches_skipped'] > 0 and logs[-1]['bad_images_skipped'] > 0


def test_diverged_weights_are_never_checkpointed_nor_called_good(image_dir, two_steps, tmp_path):
    # lr 1e9: the loss of step 1 is finite, the weights after it are finite (~1e9) but no later loss is
    flags = ('--gan_weight', '0', '--ckpt_every', '1', '--lr', '1e9', '--min_lr', '1e9')
    out = copy_of(two_steps, tmp_path)  # then resumed
    fresh, resumed = run_together(command(image_dir, tmp_path / 'fresh', '--max_steps', '4', *flags),
                                  command(image_dir, out, '--max_steps', '4', '--resume', *flags), expect_ok=False)
    assert 'non-finite loss or weights at or before step 1' in fresh.stderr
    assert 'no checkpoint was written yet' in fresh.stderr and 'the last checkpoint' not in fresh.stderr
    assert not os.path.exists(tmp_path / 'fresh' / 'ckpt.pt')

    assert f"the last checkpoint written, {str(out / 'ckpt.pt')!r}" in resumed.stderr
    kept = torch.load(out / 'ckpt.pt', weights_only=True)
    assert kept['step'] == 2 and all(v.abs().max() < 1e3 for v in kept['model'].values() if v.is_floating_point())
    train(image_dir, out, '--max_steps', '3', '--resume', '--lr', '1e-4', '--ckpt_every', '1')


def test_resume_reads_its_settings_from_the_checkpoint(image_dir, tmp_path):
    train(image_dir, tmp_path / 'out', '--max_steps', '1', '--gan_weight', '0', '--lr', '3e-4', '--grad_accum', '2')
    bare = ['train_tok.py', '--data', str(image_dir), '--out_dir', str(tmp_path / 'out'), '--workers', '0', '--resume']
    result = subprocess.run([sys.executable, *bare, '--max_steps', '2'], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert 'resuming at step 1 with the checkpoint\'s settings, changed: --max_steps' in result.stdout
    resumed = torch.load(tmp_path / 'out' / 'ckpt.pt', weights_only=True)
    assert resumed['step'] == 2 and resumed['config']['n_tokens'] == 8
    assert (resumed['args']['preset'], resumed['args']['batch_size'], resumed['args']['lr']) == ('tiny', 8, 3e-4)
    assert resumed['args']['grad_accum'] == 2

    result = run(*bare, '--seed', '1', expect_ok=False, in_process=True)
    assert '--seed 1 contradicts the checkpoint, which was trained with --seed 0: leave --seed out' in result.stderr
    result = run(*bare, '--disc_cond', expect_ok=False, in_process=True)
    assert '--disc_cond contradicts the checkpoint, which was trained without --disc_cond' in result.stderr
    result = run(*bare, '--disc_resize', '64', expect_ok=False, in_process=True)
    assert '--disc_resize 64 contradicts the checkpoint, which was trained without --disc_resize' in result.stderr
    result = subprocess.run([sys.executable, *bare, '--max_steps', '3', '--gan_weight', '0.1'], capture_output=True, text=True,
                            cwd=REPO)
    assert result.returncode == 0 and 'the GAN starts with a new one' in result.stdout, result.stderr


def test_restarted_codes_are_the_same_in_the_ema_codebook(two_steps):
    # restart at step 2, then the checkpoint: a restarted row equals the live one, every other row is an average
    ckpt = torch.load(two_steps / 'ckpt.pt', weights_only=True)
    restarted = read_log(two_steps)[-1]['codes_restarted']
    same = (ckpt['ema']['quantizer.codebook.weight'] == ckpt['model']['quantizer.codebook.weight']).all(1)
    assert restarted > 0 and same.sum() == restarted


def test_sharpness_options_train_and_the_eval_records_the_figures_that_compare_runs(image_dir, tmp_path):
    out = tmp_path / 'out'
    train(image_dir, out, '--max_steps', '3', '--full_prefix_prob', '0.5', '--disc_cond', '--gan_full_only', '--disc_resize', '64',
          '--schedule', 'nonuniform_shared', '--code_dim', '4', '--commitment', '0.1', '--lpips_weight', '1',
          '--lpips_resize', '48', '--eval_data', str(image_dir), '--eval_npz', str(out / 'recon.npz'))
    ckpt = torch.load(out / 'ckpt.pt', weights_only=True)
    assert (ckpt['config']['code_dim'], ckpt['config']['commitment'], ckpt['config']['schedule']) == (4, 0.1, 'nonuniform_shared')
    assert ckpt['disc']['condition_embed.weight'].shape[0] == 33  # one embedding per cut-off w = 0..32
    log = [json.loads(line) for line in open(out / 'log.jsonl')]
    assert 'gan_g' in log[-1] and 0 < log[-1]['ema_codebook_used'] <= 1 and 0 <= log[-1]['disc_accuracy'] <= 1
    evaluation = json.loads(open(out / 'eval.jsonl').read())
    assert evaluation['psnr_vs_image_at_N'] == evaluation['prefixes'][-1]['psnr_vs_image']
    assert list(evaluation['psnr_vs_lowpass_at']) == ['1', '2', '4', '8']
    assert 0 < evaluation['codebook_used'] <= 1 and evaluation['codebook_perplexity'] >= 1
    assert evaluation['run_wall_s'] >= evaluation['eval_wall_s'] > 0


def read_log(out):
    return [json.loads(line) for line in open(out / 'log.jsonl')]


def assert_close_weights(w1, w2):
    for k in w1:  # the tolerances of the DDP test above
        torch.testing.assert_close(w1[k], w2[k], rtol=1e-4, atol=1e-4 if k.startswith('disc.') else 5e-5, msg=k)


def test_two_processes_equal_one_with_grad_accum_2_and_resume_across_them(image_dir, tmp_path):
    """The same global batch of 8 as 2 processes x 4 images or as 1 process x 2 micro-batches of 4: the same
    training, GAN and dead-code restarts (at steps 2 and 4) included; and a run checkpointed on 2 processes
    continues on 1 with --grad_accum 2 as if it had never moved."""
    flags = ('--disc_start', '1', '--ckpt_every', '2')
    run_together(command(image_dir, tmp_path / 'accum', *flags, '--max_steps', '4', '--grad_accum', '2', '--keep', '2'),
                 command(image_dir, tmp_path / 'moved', *flags, '--max_steps', '2', nproc=2))
    assert sorted(os.listdir(tmp_path / 'accum')) == ['ckpt.pt', 'ckpt_0000002.pt', 'ckpt_0000004.pt', 'log.jsonl',
                                                      'prefixes_0000004.png']
    assert_close_weights(weights(tmp_path / 'accum' / 'ckpt_0000002.pt')[1], weights(tmp_path / 'moved')[1])
    train(image_dir, tmp_path / 'moved', *flags, '--max_steps', '4', '--grad_accum', '2', '--resume')
    (accum, w_accum), (moved, w_moved) = weights(tmp_path / 'accum'), weights(tmp_path / 'moved')
    assert accum['step'] == moved['step'] == 4
    assert_close_weights(w_accum, w_moved)
    for a, b in zip(read_log(tmp_path / 'accum'), read_log(tmp_path / 'moved'), strict=True):
        assert a['step'] == b['step'] and a.get('codes_restarted') == b.get('codes_restarted')
        assert a.keys() == b.keys() and ('gan_d' in a) == (a['step'] > 1)
        for k in {'l2', 'vq', 'gan_g', 'gan_d', 'ema_codebook_perplexity'} & a.keys():
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), (a['step'], k)
        if 'disc_accuracy' in a:  # a share of logits: rounding may flip one that sits at 0 (1/64 here)
            assert a['disc_accuracy'] == pytest.approx(b['disc_accuracy'], abs=0.05), a['step']


def read_eval(out):
    return json.loads(open(out / 'eval.jsonl').readlines()[-1])


def test_sharded_evaluation_equals_one_process_and_scores_short_prefixes_on_a_subset(image_dir, two_steps, tmp_path):
    one = read_eval(two_steps)  # one process, 8 images at the prefixes < N
    sharded, all_prefixes = copy_of(two_steps, tmp_path, 'sharded'), copy_of(two_steps, tmp_path, 'all_prefixes')
    flags = ('--resume', '--eval_only', '--eval_data', str(image_dir))
    run_together(command(image_dir, sharded, *flags, '--eval_prefix_images', '8', '--eval_npz', tmp_path / 'two.npz', nproc=2),
                 command(image_dir, all_prefixes, *flags, '--eval_prefix_images', '24'))
    two = read_eval(sharded)
    assert one['images'] == two['images'] == 24 and one['prefix_images'] == two['prefix_images'] == 8
    for a, b in zip(one['prefixes'], two['prefixes'], strict=True):
        assert a['l2_vs_lowpass'] == pytest.approx(b['l2_vs_lowpass'], rel=1e-5)
        assert a['l2_vs_image'] == pytest.approx(b['l2_vs_image'], rel=1e-5)
    assert one['codebook_perplexity'] == pytest.approx(two['codebook_perplexity'], rel=1e-5)
    assert [r['code_perplexity'] for r in one['prefixes']] == pytest.approx([r['code_perplexity'] for r in two['prefixes']])
    recon_one, recon_two = (np.load(path)['arr_0'] for path in (two_steps / 'recon.npz', tmp_path / 'two.npz'))
    assert recon_one.shape == (24, 32, 32, 3) and recon_one.dtype == np.uint8
    assert np.abs(recon_one.astype(int) - recon_two).max() <= 1  # folder order; rounding of near-ties may differ

    every = read_eval(all_prefixes)
    assert every['prefix_images'] == 24
    assert every['prefixes'][-1]['l2_vs_image'] == pytest.approx(one['prefixes'][-1]['l2_vs_image'], rel=1e-6)
    assert every['prefixes'][0]['l2_vs_image'] != pytest.approx(one['prefixes'][0]['l2_vs_image'], rel=1e-3)


def test_eval_only_scores_an_exported_tokenizer_as_the_checkpoint_it_came_from(image_dir, two_steps, tmp_path):
    exported = tmp_path / 'weights.pt'
    run(os.path.join('scripts', 'export_weights.py'), two_steps / 'ckpt.pt', exported, in_process=True)
    train(image_dir, tmp_path / 'scored', '--resume', exported, '--eval_only', '--eval_data', image_dir,
          '--eval_prefix_images', '8')
    original, rescored = read_eval(two_steps), read_eval(tmp_path / 'scored')
    assert rescored['step'] == original['step'] == 2
    for a, b in zip(original['prefixes'], rescored['prefixes'], strict=True):
        assert a['l2_vs_lowpass'] == pytest.approx(b['l2_vs_lowpass'], rel=1e-6)
        assert a['l2_vs_image'] == pytest.approx(b['l2_vs_image'], rel=1e-6)


def perplexity_of(codes):
    p = torch.bincount(codes).double() / len(codes)
    p = p[p > 0]
    return math.exp(-(p * p.log()).sum())


def test_the_eval_records_the_code_perplexity_at_each_position_and_over_all(image_dir, two_steps):
    evaluation = read_eval(two_steps)
    tok = Tokenizer.from_checkpoint(two_steps / 'ckpt.pt')  # the EMA weights, which the eval scores
    dataset = ImageFolder(image_dir, tok.config.image_size)
    codes = tok.encode(torch.stack([dataset[i][0] for i in range(len(dataset))]).float() / 127.5 - 1)
    per_position = [perplexity_of(column) for column in codes.T]
    assert [r['code_perplexity'] for r in evaluation['prefixes']] == pytest.approx(per_position, rel=1e-5)
    assert evaluation['codebook_perplexity'] == pytest.approx(perplexity_of(codes.flatten()), rel=1e-5)
    assert len(set(per_position)) > 1  # the positions differ, so a mix-up of positions would show


def test_prefix_scores_do_not_depend_on_how_the_prefix_images_are_gathered(image_dir, cifar_sample_dir, two_steps,
                                                                          tmp_path):
    # 500 images, every 2nd scored at the prefixes < N: one process gathers them in groups of 100, 100 and 50, two
    # processes in groups of 100 and 25 each; the per-prefix errors must not depend on the grouping
    runs = copy_of(two_steps, tmp_path, 'one'), copy_of(two_steps, tmp_path, 'two')
    flags = ('--resume', '--eval_only', '--eval_data', str(cifar_sample_dir), '--eval_prefix_images', '250')
    run_together(command(image_dir, runs[0], *flags), command(image_dir, runs[1], *flags, nproc=2))
    one, two = map(read_eval, runs)
    assert one['images'] == two['images'] == 500 and one['prefix_images'] == two['prefix_images'] == 250
    for a, b in zip(one['prefixes'], two['prefixes'], strict=True):
        assert a['l2_vs_lowpass'] == pytest.approx(b['l2_vs_lowpass'], rel=1e-5)
        assert a['l2_vs_image'] == pytest.approx(b['l2_vs_image'], rel=1e-5)


@pytest.fixture(scope='module')
def stage_one(image_dir, tmp_path_factory):
    """(VQGAN weights file, folder of a stage-1 run): 20 steps of proxy-code training of the tiny preset against a
    random VQGAN of the official design whose codes are one per 8 px patch."""
    root = tmp_path_factory.mktemp('stage_one')
    save_random_vqgan(root / 'vqgan.bin')
    train(image_dir, root / 'out', '--stage', '1', '--proxy_vqgan', str(root / 'vqgan.bin'), '--max_steps', '20',
          '--lr', '1e-3', '--min_lr', '1e-3', '--log_every', '5')
    return root / 'vqgan.bin', root / 'out'


def test_stage_one_trains_the_proxy_code_cross_entropy_down_without_pixel_losses(stage_one):
    vqgan_path, out = stage_one
    log = read_log(out)
    assert log[-1]['proxy_ce'] < 0.85 * log[0]['proxy_ce']  # measured: 4.11 at step 5, 3.22 at step 20
    assert not {'l2', 'lpips', 'gan_g', 'gan_d'} & set().union(*log)
    ckpt = torch.load(out / 'ckpt.pt', weights_only=True)
    assert ckpt['config']['stage'] == 1 and ckpt['disc'] is None
    assert (ckpt['args']['l2_weight'], ckpt['args']['lpips_weight'], ckpt['args']['gan_weight']) == (0, 0, 0)
    vqgan = torch.load(vqgan_path, weights_only=True)
    for k, v in vqgan.items():  # the VQGAN's decoder and codebook, copied in, stay frozen
        if not k.startswith('encoder.'):
            assert torch.equal(ckpt['model'][f'pixel_{k}'], v), k


def test_stage_two_starts_from_stage_one_and_fine_tunes_only_the_decoder_side(stage_one, image_dir, tmp_path):
    _, one = stage_one
    flags = ('--stage', '2', '--init_from', str(one / 'ckpt.pt'), '--restart_every', '0')
    train(image_dir, tmp_path / 'two', *flags, '--max_steps', '3')
    train(image_dir, tmp_path / 'two', '--max_steps', '4', '--restart_every', '0', '--resume')
    start = torch.load(one / 'ckpt.pt', weights_only=True)['ema']
    two = torch.load(tmp_path / 'two' / 'ckpt.pt', weights_only=True)
    assert two['config']['stage'] == 2 and two['step'] == 4 and two['args']['preset'] == 'tiny'
    for k, v in two['model'].items():
        frozen = k.split('.')[0] in ('patch_embed', 'enc_pos', 'latent_queries', 'enc_latent_pos', 'encoder', 'enc_ln',
                                     'to_code') or k == 'quantizer.codebook.weight'
        assert torch.equal(v, start[k]) == frozen, k
    log = read_log(tmp_path / 'two')
    assert [r['step'] for r in log] == [1, 2, 3, 4] and 'gan_g' in log[-1] and 'l2' in log[-1]


def test_decoder_fine_tuning_keeps_every_code_and_generators_of_the_old_tokenizer_decode_with_it(image_dir, two_steps,
                                                                                                 tmp_path):
    exported = tmp_path / 'weights.pt'  # a weights-only export, as a tokenizer is carried to another machine
    run(os.path.join('scripts', 'export_weights.py'), two_steps / 'ckpt.pt', exported, in_process=True)
    flags = ('--init_from', exported, '--restart_every', '0', '--lr', '1e-2', '--min_lr', '1e-2', '--max_steps', '3')
    # the encoder side is frozen before the DDP wrap, or DDP waits for gradients that frozen weights never get
    run_together(command(image_dir, tmp_path / 'tuned', *flags), command(image_dir, tmp_path / 'ddp', *flags, nproc=2))
    (_, one), (_, two) = weights(tmp_path / 'tuned'), weights(tmp_path / 'ddp')
    for k in one:
        # lr 1e-2: Adam's rounding-noise steps are a hundred times those of the DDP test above
        torch.testing.assert_close(one[k], two[k], rtol=1e-3, atol=5e-3, msg=k)
    train(image_dir, tmp_path / 'tuned', '--max_steps', '4', '--restart_every', '0', '--resume')
    start = torch.load(two_steps / 'ckpt.pt', weights_only=True)['ema']
    tuned = torch.load(tmp_path / 'tuned' / 'ckpt.pt', weights_only=True)
    assert tuned['config']['stage'] == 0 and tuned['step'] == 4
    for k, v in tuned['model'].items():
        if k != 'quantizer.usage':
            assert torch.equal(v, start[k]) == (k.split('.')[0] in ENCODER_SIDE), k
    images = to_float(torch.stack([image for image, _ in ImageFolder(image_dir, 32)]), 'cpu')
    old, new = (Tokenizer.from_checkpoint(path) for path in (two_steps / 'ckpt.pt', tmp_path / 'tuned' / 'ckpt.pt'))
    with torch.no_grad():
        codes = old.encode(images)
        assert torch.equal(new.encode(images), codes)
        assert not torch.allclose(new.decode(codes), old.decode(codes))
    # a generator records its tokenizer's sha256: the checkpoint's, or the export's source's
    for source in (two_steps / 'ckpt.pt', exported):
        assert is_tokenizer_file(new, tmp_path / 'tuned' / 'ckpt.pt', common.file_sha256(source))
    assert not is_tokenizer_file(new, tmp_path / 'tuned' / 'ckpt.pt', common.file_sha256(tmp_path / 'tuned' / 'log.jsonl'))


def test_decoder_fine_tuning_refuses_what_would_change_the_codes(stage_one, image_dir, two_steps, tmp_path):
    _, one = stage_one
    result = refused(image_dir, tmp_path / 'out', '--init_from', two_steps / 'ckpt.pt')  # command()'s --restart_every 2
    assert 'decoder fine-tuning (--init_from) runs with --restart_every 0: leave --restart_every out' in result.stderr
    result = refused(image_dir, tmp_path / 'out', '--init_from', two_steps / 'ckpt.pt', '--restart_every', '0',
                     '--codebook_size', '32')
    assert ("--codebook_size 32 contradicts the --init_from checkpoint (--codebook_size 64): the run keeps its "
            "tokenizer's shape; leave --codebook_size out") in result.stderr
    result = refused(image_dir, tmp_path / 'out', '--init_from', one / 'ckpt.pt', '--restart_every', '0')
    assert ("is a stage-1 checkpoint: decoder fine-tuning (--stage 0) starts from a stage-0 tokenizer; for TiTok's "
            "stage 2, pass --stage 2") in result.stderr
    assert not os.path.exists(tmp_path / 'out' / 'ckpt.pt')


def test_flags_that_do_not_fit_the_stage_stop_with_the_fix(stage_one, image_dir, tmp_path):
    vqgan_path, one = stage_one
    result = refused(image_dir, one, '--resume', '--stage', '2')
    assert (f"--stage 2 contradicts the checkpoint, which was trained at --stage 1: to start stage 2 from it, run "
            f"--stage 2 --init_from {one / 'ckpt.pt'} with another --out_dir") in result.stderr
    result = refused(image_dir, tmp_path / 'out', '--stage', '1')
    assert '--stage 1 needs --proxy_vqgan PATH' in result.stderr and 'fun-research/TiTok' in result.stderr
    result = refused(image_dir, tmp_path / 'out', '--stage', '1', '--proxy_vqgan', str(tmp_path / 'absent.bin'))
    assert 'do not exist' in result.stderr and 'fun-research/TiTok' in result.stderr
    result = refused(image_dir, tmp_path / 'out', '--stage', '1', '--proxy_vqgan', str(vqgan_path), '--gan_weight', '0.1')
    assert '--stage 1 runs with --gan_weight 0.0: leave --gan_weight out' in result.stderr
    assert not os.path.exists(tmp_path / 'out' / 'ckpt.pt')


@pytest.mark.parametrize('data, flags, message', [
    ('images', ('--batch_size', '32'), "--batch_size 32 is larger than the data set's 24 images: pass --batch_size 24 or less"),
    ('missing', (), "missing' does not exist: pass a folder of <class>/<image> files"),
    ('empty_class', (), "class folder(s) cat of"),
    ('images', ('--lpips_weight', '1', '--lpips_path', 'missing.pth'), '--lpips_path missing.pth: no such file'),
    ('images', ('--image_size', '20'), '--image_size 20 is not a multiple of the patch size 8: pass --patch_size with a divisor'),
    ('images', ('--image_size', '16', '--gan_weight', '0.1'),
     '--gan_weight 0.1: the PatchGAN discriminator needs images of 24 px or more, these are 16 px: pass --gan_weight 0'),
])
def test_bad_data_and_flags_stop_with_one_line_and_exit_status_2(image_dir, tmp_path, data, flags, message):
    os.makedirs(tmp_path / 'empty_class' / 'cat')
    result = refused(image_dir if data == 'images' else tmp_path / data, tmp_path / 'out', *flags)
    assert result.returncode == 2 and 'Traceback' not in result.stderr, result.stderr
    assert result.stderr.startswith('train_tok.py: error: ') and message in result.stderr, result.stderr
