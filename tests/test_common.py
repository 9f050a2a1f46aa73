"""common.py's checkpoint loading and atomic writes against hostile or damaged files."""
import argparse
import os
import re
import subprocess
import sys

import pytest
import torch

import common
from conftest import REPO, run


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


def test_checkpoint_whose_pickle_runs_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / 'code_ran'
    torch.save({'kind': 'generator', 'config': RunsCode(marker)}, tmp_path / 'evil.pt')
    with pytest.raises(ValueError, match='refused unread, since loading it could run code'):
        common.load_checkpoint(tmp_path / 'evil.pt', 'generator')
    assert not marker.exists()


def test_checkpoints_written_by_the_trainers_load_with_weights_only(tiny_tokenizer):
    ckpt = torch.load(tiny_tokenizer[1], map_location='cpu', weights_only=True)
    assert ckpt['kind'] == 'tokenizer' and isinstance(ckpt['args'], dict)
    common.set_rng_state(ckpt['rng'])


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np
    torch.save({'rng': common.rng_state()}, tmp_path / 'rng.pt')
    expected = random.random(), np.random.rand(), np.random.randn(), torch.rand(1)
    common.set_rng_state(torch.load(tmp_path / 'rng.pt', weights_only=True)['rng'])
    assert (random.random(), np.random.rand(), np.random.randn(), torch.rand(1)) == expected


def test_damaged_checkpoints_are_refused_with_the_reason(tmp_path):
    torch.save({'kind': 'tokenizer', 'config': {}, 'model': {'w': torch.zeros(1000)}, 'step': 1}, tmp_path / 'good.pt')
    good = (tmp_path / 'good.pt').read_bytes()
    for name, content in (('empty.pt', b''), ('truncated.pt', good[:len(good) // 2]), ('random.pt', os.urandom(3000)),
                          ('text.pt', b'hello\n')):
        (tmp_path / name).write_bytes(content)
        # random bytes too: not 'could run code', which only a pickle naming a class or function is told
        with pytest.raises(ValueError, match=f"{name}.* (cannot be read as a checkpoint|is not a checkpoint)"):
            common.load_checkpoint(tmp_path / name, 'tokenizer')
    torch.save({'kind': 'tokenizer', 'model': {}}, tmp_path / 'no_config.pt')
    with pytest.raises(ValueError, match='a tokenizer checkpoint without config, step: it was not written by train_tok.py'):
        common.load_checkpoint(tmp_path / 'no_config.pt', 'tokenizer')


def test_atomic_write_removes_stale_and_failed_temp_files(tmp_path):
    path = tmp_path / 'ckpt.pt'
    dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True)
    stale = tmp_path / f'ckpt.pt.tmp.{int(dead.stdout)}'  # left by a process killed mid-save
    stale.write_bytes(b'x' * 100)
    live = tmp_path / f'ckpt.pt.tmp.{os.getppid()}'  # a save still under way in another process
    live.write_bytes(b'x')

    def disk_full(f):
        f.write(b'partial')
        raise OSError(28, 'No space left on device')
    with pytest.raises(common.UserError, match=f"no space left on the device while writing {str(path)!r}"):
        common.atomic_write(str(path), disk_full)
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name]
    common.atomic_write(str(path), lambda f: f.write(b'ok'))
    assert path.read_bytes() == b'ok'


def test_full_disk_during_torch_save_names_the_device_and_the_path(tmp_path, monkeypatch):
    """torch.save onto a full disk raises '[enforce fail at inline_container.cc]', which names neither."""
    path = tmp_path / 'ckpt.pt'
    common.atomic_save({'w': torch.ones(3)}, str(path))
    monkeypatch.setattr(common, 'open', lambda name, mode: open('/dev/full', mode), raising=False)  # ENOSPC on write
    with pytest.raises(common.UserError, match=f"no space left on the device while writing {str(path)!r}"):
        common.atomic_save({'w': torch.zeros(100_000)}, str(path))
    assert torch.equal(torch.load(path, weights_only=True)['w'], torch.ones(3))  # the last checkpoint is intact


def test_disk_full_is_told_from_other_write_errors():
    assert common.disk_full(RuntimeError('[enforce fail at inline_container.cc:672] . file write failed, errno: 28'))
    try:
        try:
            raise OSError(28, 'No space left on device')
        except OSError:
            raise RuntimeError('[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598')
    except RuntimeError as error:
        assert common.disk_full(error)
    assert not common.disk_full(OSError(13, 'Permission denied'))
    assert not common.disk_full(RuntimeError('[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598'))


def test_checkpoint_with_nonfinite_weights_is_refused_at_load(tmp_path):
    weights = {'w': torch.tensor([1.0, float('nan')])}
    torch.save({'kind': 'tokenizer', 'config': {}, 'model': weights, 'ema': None, 'step': 1}, tmp_path / 'nan.pt')
    with pytest.raises(ValueError, match="nan.pt' holds non-finite .NaN or inf. weights"):
        common.load_checkpoint(str(tmp_path / 'nan.pt'), 'tokenizer')


def test_user_error_at_an_entry_point_is_one_line_with_exit_status_2(tmp_path):
    script = tmp_path / 'entry.py'
    script.write_text('import common\ncommon.exit_on_user_error()\nraise common.UserError("--flag 0: use 1 or more")\n')
    result = subprocess.run([sys.executable, str(script)], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, 'PYTHONPATH': REPO})
    assert (result.returncode, result.stderr) == (2, 'entry.py: error: --flag 0: use 1 or more\n')


def test_states_finite_looks_into_optimizer_state():
    weights = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(weights.parameters())
    weights(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    assert common.states_finite(weights.state_dict(), optimizer.state_dict())
    optimizer.state[weights.weight]['exp_avg_sq'][0, 0] = float('inf')
    assert not common.states_finite(weights.state_dict(), optimizer.state_dict())


@pytest.mark.parametrize('flags, message', [
    (('--ckpt_every', '0'), '--ckpt_every 0: must be at least 1'),
    (('--batch_size', '0'), '--batch_size 0: must be at least 1'),
    (('--sample_every', '-1'), '--sample_every -1: must be 0 (never) or more'),
    (('--device', 'cuda'), '--device cuda: CUDA is not available'),
    (('--n_tokens', '0'), '--n_tokens 0: must be at least 1'),
    (('--preset', 'huge'), "argument --preset: invalid choice: 'huge'"),
])
def test_unusable_flags_stop_with_a_message(tmp_path, flags, message):
    if 'cuda' in flags and torch.cuda.is_available():
        pytest.skip('CUDA is available here')
    result = run('train_tok.py', '--preset', 'tiny', '--data', tmp_path, '--out_dir', tmp_path / 'out', *flags,
                 expect_ok=False, in_process=True)
    assert result.returncode == 2 and message in result.stderr and 'Traceback' not in result.stderr


def test_check_writable_names_the_flag(tmp_path):
    (tmp_path / 'file').write_bytes(b'')
    with pytest.raises(common.UserError, match=r"--out_dir: .*file/sub' is not a writable folder .*: pass another --out_dir"):
        common.check_writable(str(tmp_path / 'file' / 'sub'), '--out_dir')
    with pytest.raises(common.UserError, match=r"--json: .*file/sub' is not a writable folder"):
        common.check_writable_file(str(tmp_path / 'file' / 'sub' / 'out.json'), '--json')
    with pytest.raises(common.UserError, match=r"--json: .* is a folder: pass a file path"):
        common.check_writable_file(str(tmp_path), '--json')


def test_help_shows_every_default_but_unset_ones_and_keeps_the_description_as_written():
    parser = argparse.ArgumentParser(description='first line\n    an indented example', formatter_class=common.HelpFormatter)
    parser.add_argument('--lr', type=float, default=1e-4)  # no help: argparse alone would show nothing
    parser.add_argument('--batch_size', type=int, default=256, help='global batch')
    parser.add_argument('--warmup', type=int, help='steps (default: a tenth of the run)')
    parser.add_argument('--compile', action='store_true')
    text = parser.format_help()
    assert 'default: 0.0001' in text and 'global batch (default: 256)' in text
    assert 'None' not in text and 'False' not in text and '\n    an indented example' in text


def test_threads_and_loader_processes_fit_the_idle_cores(monkeypatch):
    monkeypatch.delenv('OMP_NUM_THREADS', raising=False)
    monkeypatch.delenv('LOCAL_WORLD_SIZE', raising=False)
    threads = torch.get_num_threads()
    try:
        for cores, load, device, workers in ((2, 0.1, 'cpu', (0, 2)), (2, 1.2, 'cpu', (0, 1)), (16, 0.0, 'cpu', (4, 12)),
                                             (16, 0.0, 'cuda', (8, None))):
            monkeypatch.setattr(os, 'sched_getaffinity', lambda pid, cores=cores: set(range(cores)))
            monkeypatch.setattr(os, 'getloadavg', lambda load=load: (load, load, load))
            chosen, line = common.use_cpu_cores(torch.device(device), None)
            assert chosen == workers[0], (cores, load, device)
            if device == 'cpu':  # a GPU run leaves the threads alone
                assert torch.get_num_threads() == workers[1] and f'{workers[1]} thread(s)' in line
        monkeypatch.setenv('OMP_NUM_THREADS', '3')
        torch.set_num_threads(3)
        assert common.use_cpu_cores(torch.device('cpu'), 5) == (5, '3 thread(s) and 5 image loading process(es) '
                                                                   '(OMP_NUM_THREADS=3)')
    finally:
        torch.set_num_threads(threads)


# Runs a trainer as __main__ and, at interpreter exit (after its last line, before its globals are torn down),
# prints the names of the threads still alive: gloo's ('gloo_tcp_loop', 'pt_gloo_runloop') mean the process group
# outlived cleanup_distributed and dies in interpreter teardown, where it aborts about one run in 60.
EXIT_PROBE = """
import atexit, os, runpy, sys


def thread_names():  # a thread that ends between the listing and the read of its name is not alive: left out
    names = []
    for t in os.listdir('/proc/self/task'):
        try:
            names.append(open(f'/proc/self/task/{t}/comm').read().strip())
        except (FileNotFoundError, ProcessLookupError):
            pass
    return sorted(names)


# one write of one line: the two ranks share torchrun's stdout
atexit.register(lambda: os.write(1, ('threads at exit: ' + ' '.join(thread_names()) + '\\n').encode()))
sys.argv = sys.argv[1:]
sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))
runpy.run_path(sys.argv[0], run_name='__main__')
"""


@pytest.mark.skipif(not os.path.isdir('/proc/self/task'), reason='reads thread names from /proc')
def test_two_process_runs_tear_the_process_group_down_before_exit(tiny_tokenizer, tmp_path):
    image_dir, tok_ckpt = tiny_tokenizer
    (tmp_path / 'exit_probe.py').write_text(EXIT_PROBE)
    common_flags = ('--data', image_dir, '--workers', '0', '--device', 'cpu')
    runs = {
        'tokenizer training and evaluation': ('train_tok.py', '--preset', 'tiny', '--out_dir', tmp_path / 'tok',
                                              '--batch_size', '8', '--max_steps', '1', '--eval_data', image_dir),
        'tokenizer --eval_only': ('train_tok.py', '--resume', tok_ckpt, '--eval_only', '--eval_data', image_dir,
                                  '--out_dir', tmp_path / 'eval'),
        'generator training': ('train_gen.py', '--preset', 'tiny', '--tok_ckpt', tok_ckpt, '--out_dir', tmp_path / 'gen',
                               '--batch_size', '8', '--max_steps', '1', '--sample_every', '0'),
    }
    for name, argv in runs.items():
        result = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--standalone',
                                 tmp_path / 'exit_probe.py', *argv, *common_flags], cwd=REPO, capture_output=True,
                                text=True, timeout=300, env={**os.environ, 'OMP_NUM_THREADS': '1'})
        assert result.returncode == 0, f"{name}: {result.stdout[-1000:]}{result.stderr[-3000:]}"
        exits = re.findall(r'threads at exit: [^\n]*', result.stdout)
        assert len(exits) == 2, f"{name}: {result.stdout[-2000:]}{result.stderr[-2000:]}"
        assert not any('gloo' in line for line in exits), f"{name}: the process group outlived the run: {exits}"
