"""sweep.py in this process on tiny checkpoints built by the real trainers: the grid, the choice of the best and its
sample.py flags, seeding, and bad inputs. The FID maths is fid.py's own, but the network is a cheap stand-in, so no
Inception weights are needed: on a 2-core CPU the real one takes ~0.1 s an image, and one FID of its 2048 features
over a few images (a singular covariance, so sqrtm runs twice) took ~70 s."""
import json
import re

import numpy as np
import pytest
import torch

import fid
import sample
import sweep
from common import UserError
from conftest import train_gen

pytestmark = pytest.mark.filterwarnings('ignore:.*covariance:UserWarning')  # a few samples make singular ones
N_TOKENS = 8  # the tiny tokenizer preset


class StandInInception(torch.nn.Module):
    """FIDInceptionV3's interface: pool = per-channel mean and std (6 features), spatial = 2x2 means of red (4)."""
    weights_path = 'stand-in'

    def forward(self, x):
        pool = torch.cat([x.mean((2, 3)), x.std((2, 3))], 1)
        return pool, torch.nn.functional.adaptive_avg_pool2d(x[:, :1], 2).flatten(1), None


@pytest.fixture(autouse=True)
def stand_in(monkeypatch):
    monkeypatch.setattr(fid, 'load_inception', lambda path=None, device='cpu', channels_last=False: StandInInception())


# the reference: what sample.py draws with these flags, so that one row of a sweep with this seed scores FID 0
REF_FLAGS, SEED = ('--cfg', 2.0, '--top_k', 5, '--truncate', 4), 3


@pytest.fixture(scope='module')
def setup(tiny_tokenizer, tmp_path_factory):
    """(generator checkpoint, statistics of sample.py's samples with REF_FLAGS and SEED, written by fid.py)."""
    data, tok_ckpt = tiny_tokenizer
    root = tmp_path_factory.mktemp('sweep')
    train_gen(tok_ckpt, root / 'gen', '--data', data, '--max_steps', 3, '--lr', 0.3, '--ema', 0.9)
    sample.main(['--ckpt', str(root / 'gen' / 'ckpt.pt'), '--out', str(root / 'samples'), '--per_class', '3',
                 '--batch_size', '4', '--seed', str(SEED), '--device', 'cpu', *map(str, REF_FLAGS)])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fid, 'load_inception', lambda *args, **kwargs: StandInInception())
        assert fid.main(['--save-stats', str(root / 'ref.npz'), str(root / 'samples' / 'samples_9x32x32x3.npz'),
                         '--no-pr', '--device', 'cpu', '--workers', '0']) == 0
    return root / 'gen' / 'ckpt.pt', root / 'ref.npz'


def run_sweep(setup, out, *extra):
    ckpt, ref = setup
    sweep.main(['--ckpt', str(ckpt), '--ref', str(ref), '--device', 'cpu', '--per_class', '3', '--batch_size', '4',
                '--json', str(out / 'sweep.json'), '--best_flags', str(out / 'best_flags'), *map(str, extra)])
    return json.loads((out / 'sweep.json').read_text()), (out / 'best_flags').read_text()


def setting(row):
    return row['cfg'], row['temperature'], row['top_k'], row['top_p'], row['truncate']


def test_grid_best_flags_and_table(setup, tmp_path, capsys):
    report, best_flags = run_sweep(setup, tmp_path, '--seed', SEED, '--cfg', 0, 2, '--top_k', 0, 5, '--truncate', 0, 4)
    rows = report['rows']
    assert [setting(r) for r in rows] == [
        (0.0, 1.0, 0, 0.0, 0), (0.0, 1.0, 0, 0.0, 4), (0.0, 1.0, 5, 0.0, 0), (0.0, 1.0, 5, 0.0, 4),
        (2.0, 1.0, 0, 0.0, 0), (2.0, 1.0, 0, 0.0, 4), (2.0, 1.0, 5, 0.0, 0), (2.0, 1.0, 5, 0.0, 4)]
    assert report['n'] == 9 and all(np.isfinite([r['fid'], r['sfid']]).all() for r in rows)
    # each row's time is split into sampling (with decode) and Inception features; the rest is FID and the probe
    assert all(0 < r['sampling_seconds'] and 0 < r['inception_seconds'] and
               r['sampling_seconds'] + r['inception_seconds'] <= r['seconds'] for r in rows)
    # the reference's own setting: sweep.py drew sample.py's very images, the lowest FID of all, but truncated
    by_fid = sorted(rows, key=lambda r: r['fid'])
    assert setting(by_fid[0]) == (2.0, 1.0, 5, 0.0, 4) and abs(by_fid[0]['fid']) < 1e-3 * by_fid[1]['fid']

    best = min((r for r in rows if r['truncate'] == 0), key=lambda r: r['fid'])
    assert report['best'] == best and report['best_flags'] + '\n' == best_flags
    args = sample.parse_args(['--ckpt', 'gen.pt', *best_flags.split()])
    assert (args.cfg, args.temperature, args.top_k, args.top_p, args.truncate, args.cfg_ramp) == (*setting(best), False)

    table = capsys.readouterr().out.splitlines()
    assert table[-1] == f"best: FID {best['fid']:.3f} with {best_flags.strip()}"
    assert [line.split()[:6] for line in table[-9:-1]] == [
        [f'{r["cfg"]:g}', 'off', f'{r["temperature"]:g}', str(r['top_k']), f'{r["top_p"]:g}', str(r['truncate'])] for r in rows]

    # when every row truncates, the best is a truncated one
    report, best_flags = run_sweep(setup, tmp_path, '--seed', SEED, '--cfg', 0, 2, '--top_k', 5, '--truncate', 4)
    assert setting(report['best']) == (2.0, 1.0, 5, 0.0, 4)
    assert best_flags == '--cfg 2.0 --temperature 1.0 --top_k 5 --top_p 0.0\n'
    # a bare --cfg_ramp ramps every row, so the best one too
    best_flags = run_sweep(setup, tmp_path, '--cfg', 1.5, '--temperature', 0.9, '--cfg_ramp')[1]
    assert best_flags == '--cfg 1.5 --temperature 0.9 --top_k 0 --top_p 0.0 --cfg_ramp\n'
    assert sample.parse_args(['--ckpt', 'gen.pt', *best_flags.split()]).cfg_ramp
    # off and on: the ramp is an axis of the grid, and the best row's flags say which it took
    report, best_flags = run_sweep(setup, tmp_path, '--seed', SEED, '--cfg', 2.0, '--top_k', 5, '--cfg_ramp', 'off', 'on')
    assert [(r['cfg'], r['cfg_ramp']) for r in report['rows']] == [(2.0, False), (2.0, True)]
    assert report['rows'][0]['fid'] != report['rows'][1]['fid']
    assert ('--cfg_ramp' in best_flags.split()) == report['best']['cfg_ramp']


def test_no_ema_samples_the_raw_weights_and_is_a_flag_of_the_best_setting(setup, tmp_path):
    ema_row = run_sweep(setup, tmp_path / 'ema', '--seed', SEED)[0]['rows'][0]
    report, best_flags = run_sweep(setup, tmp_path / 'raw', '--seed', SEED, '--no_ema')
    assert report['rows'][0]['fid'] != ema_row['fid']  # the checkpoint's EMA weights are not its raw ones
    assert best_flags == '--cfg 1.5 --temperature 1.0 --top_k 0 --top_p 0.0 --no_ema\n'
    assert sample.parse_args(['--ckpt', 'gen.pt', *best_flags.split()]).no_ema


def test_best_row_skips_truncated_rows_unless_all_truncate():
    rows = [dict(fid=3.0, truncate=0), dict(fid=1.0, truncate=4), dict(fid=2.0, truncate=0)]
    assert sweep.best_row(rows) is rows[2]
    assert sweep.best_row([rows[1], dict(fid=0.5, truncate=2)])['fid'] == 0.5


def test_same_seed_same_fid(setup, tmp_path):
    first, second, other = (run_sweep(setup, tmp_path / name, '--seed', seed, *REF_FLAGS)[0]['rows'][0]
                            for name, seed in (('a', SEED), ('b', SEED), ('c', SEED + 1)))
    assert first['fid'] == second['fid'] and first['sfid'] == second['sfid']
    assert abs(first['fid']) < 1e-3 * other['fid']  # another seed: other samples than the reference's


def test_statistics_without_spatial_ones_give_no_sfid(setup, tmp_path, capsys):
    with np.load(setup[1]) as stats:  # pytorch-fid's format: mu and sigma only
        np.savez(tmp_path / 'pytorch_fid.npz', mu=stats['mu'], sigma=stats['sigma'])
    rows = run_sweep((setup[0], tmp_path / 'pytorch_fid.npz'), tmp_path, '--seed', SEED, *REF_FLAGS)[0]['rows']
    assert rows[0]['sfid'] is None and abs(rows[0]['fid']) < 1e-9
    assert capsys.readouterr().out.splitlines()[-2].split()[7] == '-'


def test_sampling_autocast_stays_inside_the_batches(setup):
    """The Inception (and anything else the caller runs between batches) must not run under the sampler's bf16."""
    gpt, tok, _ = sample.load_models(str(setup[0]))
    labels = np.arange(3).repeat(2)  # two batches
    for _ in sample.sample_batches(gpt, tok, labels, 4, 0, N_TOKENS, bf16=True):
        assert not torch.is_autocast_enabled('cpu')


@pytest.mark.parametrize('extra, message', [
    (('--truncate', 0, 8), f'--truncate 8: out of range, use 0..{N_TOKENS - 1}'),
    (('--per_class', 0), '--per_class 0 --batch_size 4: both must be at least 1'),
    (('--top_k', 1000), '--top_k 1000: out of range, use 0 (off) .. K=64'),
    (('--temperature', 1, 0), '--temperature 0.0: out of range, use a value above 0'),
    (('--classes', '0,5'), '--classes: 5 is no class of this generator'),
])
def test_bad_inputs_stop_before_sampling(setup, tmp_path, extra, message):
    with pytest.raises(UserError, match=re.escape(message)):
        run_sweep(setup, tmp_path, *extra)
    assert not list(tmp_path.iterdir())


def test_bad_reference_or_weights_say_so(setup, tmp_path, monkeypatch):
    with pytest.raises(UserError, match='missing.npz: no such file or folder'):
        run_sweep((setup[0], tmp_path / 'missing.npz'), tmp_path)
    monkeypatch.undo()  # the real loader: it stops on the missing file before reading any weights
    with pytest.raises(UserError, match='Inception weights .*missing.pth: no such file'):
        run_sweep(setup, tmp_path, '--inception', tmp_path / 'missing.pth')
    assert not list(tmp_path.iterdir())


def test_unwritable_json_or_best_flags_stop_before_sampling(setup, tmp_path, monkeypatch):
    monkeypatch.setattr(sample, 'sample_batches', lambda *a, **k: pytest.fail('sampled before the outputs were checked'))
    (tmp_path / 'a_file').write_bytes(b'')
    for flag in ('--json', '--best_flags'):
        with pytest.raises(UserError, match=f"{flag}: .*a_file' is not a writable folder"):
            run_sweep(setup, tmp_path, flag, tmp_path / 'a_file' / 'out')
