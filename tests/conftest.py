import contextlib
import io
import os
import runpy
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import common  # noqa: E402  (from REPO)


@pytest.fixture(scope='session')
def cifar_sample_dir():
    """500 real CIFAR-10 images bundled in assets/ (<class>/<image>.jpg): the first 50 per class of the test split."""
    return Path(REPO) / 'assets' / 'cifar10_sample'


@pytest.fixture
def cifar_images(cifar_sample_dir):
    """Eight real 32x32 CIFAR-10 test images in [-1, 1], one or two per class."""
    classes = sorted(os.listdir(cifar_sample_dir))[:8]
    paths = [sorted((cifar_sample_dir / c).iterdir())[0] for c in classes]
    arr = np.stack([np.asarray(Image.open(p).convert('RGB')) for p in paths])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1


# one thread per process: the tiny models are far slower when threads fight over shared cores
ENV = {**os.environ, 'OMP_NUM_THREADS': '1'}
TIMEOUT = 300  # seconds a run may take
N_CLASSES, PER_CLASS = 3, 4


def run(*argv, expect_ok=True, in_process=False):
    """`python ARGV` in REPO with ENV, in a subprocess; in_process: a script's run that stops before training
    (a refusal, a message) run in this process instead (run_in_process), without a torch start-up of its own."""
    if in_process:
        result = run_in_process(*argv)
    else:
        result = subprocess.run([sys.executable, *map(str, argv)], cwd=REPO, env=ENV, capture_output=True, text=True,
                                timeout=TIMEOUT)
    if expect_ok:
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    else:
        assert result.returncode != 0, result.stdout[-2000:]
    return result


def run_together(*commands, expect_ok=True):
    """Independent runs (each the argv of one run()) in subprocesses at the same time: a run spends seconds
    starting torch on one core while the other idles. -> their results, in order."""
    with ThreadPoolExecutor(len(commands)) as pool:
        return list(pool.map(lambda argv: run(*argv, expect_ok=expect_ok), commands))


def run_in_process(script, *argv):
    """`python SCRIPT ARGV` as a subprocess would run it (__main__ in REPO, ENV's one thread) but in this process:
    -> CompletedProcess with its output and exit status, an uncaught exception going to the sys.excepthook the
    script installed (common.exit_on_user_error), as the interpreter hands it over. What the script changes in this
    process (sys.argv, sys.path, the hook, the random streams it seeds) is put back. For runs that stop before
    training: a run that trains belongs in its own process, and one that does not stop within TIMEOUT is ended by an
    exception (as a subprocess by its timeout)."""
    def overran(signum, frame):
        raise TimeoutError(f"{script} ran past {TIMEOUT} s in the test's process")

    stdout, stderr = io.StringIO(), io.StringIO()
    saved_argv, saved_path, saved_hook, saved_rng = sys.argv, sys.path[:], sys.excepthook, common.rng_state()
    saved_alarm = signal.signal(signal.SIGALRM, overran)
    sys.argv = [script, *map(str, argv)]
    signal.alarm(TIMEOUT)
    try:
        with contextlib.chdir(REPO), mock.patch.dict(os.environ, OMP_NUM_THREADS=ENV['OMP_NUM_THREADS']), \
                contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            returncode = exit_status_of_main(script)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, saved_alarm)
        sys.argv, sys.path[:], sys.excepthook = saved_argv, saved_path, saved_hook
        common.set_rng_state(saved_rng)
    return subprocess.CompletedProcess([script, *argv], returncode, stdout.getvalue(), stderr.getvalue())


def exit_status_of_main(script):
    try:
        try:
            runpy.run_path(script, run_name='__main__')
        except Exception as error:  # uncaught: the interpreter passes it to sys.excepthook, then exits with 1
            sys.excepthook(type(error), error, error.__traceback__)
            return 1
    except SystemExit as stop:  # from the script or from its excepthook (the scripts run here exit with a number)
        return stop.code or 0
    return 0


def train_gen_command(tok_ckpt, out_dir, *extra):
    """The argv of a small train_gen.py run."""
    return ('train_gen.py', '--preset', 'tiny', '--tok_ckpt', tok_ckpt, '--out_dir', out_dir, '--batch_size', 8,
            '--workers', 0, '--log_every', 1, '--sample_every', 0, *extra)


def train_gen(tok_ckpt, out_dir, *extra, expect_ok=True, in_process=False):
    return run(*train_gen_command(tok_ckpt, out_dir, *extra), expect_ok=expect_ok, in_process=in_process)


def make_image_folder(root):
    """PER_CLASS images in each of N_CLASSES folders: one dominant colour per class plus noise, not square."""
    rng = np.random.default_rng(0)
    for c in range(N_CLASSES):
        os.makedirs(root / f'class{c}', exist_ok=True)
        for i in range(PER_CLASS):
            img = rng.integers(0, 80, (40, 48, 3))
            img[..., c] += 150
            Image.fromarray(img.astype(np.uint8)).save(root / f'class{c}' / f'{i}.png')


@pytest.fixture(scope='session')
def tiny_tokenizer(tmp_path_factory):
    """(image folder, tokenizer checkpoint): 2 steps of train_tok.py tiny, built once per session in its base temp dir."""
    root = tmp_path_factory.getbasetemp() / 'tiny_tokenizer'
    tok_ckpt = root / 'tok' / 'ckpt.pt'
    if not tok_ckpt.exists():
        make_image_folder(root / 'data')
        run('train_tok.py', '--preset', 'tiny', '--data', root / 'data', '--lpips_weight', 0, '--gan_weight', 0,
            '--max_steps', 2, '--batch_size', 8, '--workers', 0, '--out_dir', root / 'tok', '--log_every', 1)
    return root / 'data', tok_ckpt


@pytest.fixture(scope='session')
def generator_ckpt(tiny_tokenizer, tmp_path_factory):
    """A tiny generator checkpoint on the tiny tokenizer (3 steps of train_gen.py, EMA apart from the training
    weights), built once per session, for the tests that only read it."""
    data, tok_ckpt = tiny_tokenizer
    out_dir = tmp_path_factory.mktemp('gen')
    train_gen(tok_ckpt, out_dir, '--data', data, '--max_steps', 3, '--lr', 0.3, '--ema', 0.9)
    return out_dir / 'ckpt.pt'


def save_modified_tokenizer(tok_ckpt, path, edit):
    """A tokenizer checkpoint made from tok_ckpt by edit(ckpt) (other weights, other config)."""
    ckpt = torch.load(tok_ckpt, map_location='cpu', weights_only=True)
    edit(ckpt)
    torch.save(ckpt, path)
    return path


def perturb_weights(ckpt):
    for weights in (ckpt['model'], ckpt['ema']):
        weights['to_code.weight'] = weights['to_code.weight'] + 0.5
