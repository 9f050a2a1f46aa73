"""scripts/var_speed.py on the CPU: VAR's own sampler (a 2-block VAR, 4 scales, 64 px) against the tiny presets.
It needs VAR's code: a checkout named by $VAR_REPO, or else the git mirror this project's machines keep at
MIRROR, exported; skipped without either."""
import json
import os
import subprocess

import pytest

from conftest import run

MIRROR = '/work/.mirror/FoundationVision+VAR/repo'


@pytest.fixture(scope='module')
def var_repo(tmp_path_factory):
    if os.environ.get('VAR_REPO'):
        return os.environ['VAR_REPO']
    if not os.path.isdir(MIRROR):
        pytest.skip('no VAR checkout: set VAR_REPO to a clone of https://github.com/FoundationVision/VAR')
    tree = tmp_path_factory.mktemp('VAR')
    archive = subprocess.run(['git', '-C', MIRROR, 'archive', 'HEAD'], capture_output=True, check=True).stdout
    subprocess.run(['tar', '-x', '-C', tree], input=archive, check=True)
    return tree


def test_var_and_ours_timed_side_by_side_on_cpu(tmp_path, var_repo):
    out = tmp_path / 'var_speed.jsonl'
    stdout = run('scripts/var_speed.py', '--var_repo', var_repo, '--device', 'cpu', '--batches', 1, 2, '--iters', 1,
                 '--var_depth', 2, '--var_patch_nums', 1, 2, 3, 4, '--preset', 'tiny', '--tok_preset', 'tiny',
                 '--top_k', 8, '--json', out).stdout
    with open(out) as f:
        records = [json.loads(line) for line in f]

    var = [r for r in records if r['bench'] == 'var_sample']
    assert [r['batch'] for r in var] == [1, 2]
    for r in var:
        assert 'error' not in r and r['e2e_ms'] > 0 and r['images_per_s'] > 0 and r['finite']
        assert (r['n_tokens'], r['steps'], r['image_size']) == (30, 4, 64) and r['decoder_flops_per_image'] > 0
        assert r['var_attention'] and r['device_name'] == 'cpu' and r['torch']
    ours = [r for r in records if r['bench'] == 'sample']
    assert sorted((r['model'], r['batch'], r['variant']) for r in ours) == sorted(
        (model, B, variant) for model in ('tiny/tiny', 'tiny-p4/tiny') for B in (1, 2) for variant in ('slow', 'fast'))
    assert all('error' not in r and r['e2e_ms'] > 0 for r in ours)

    rows = [r for r in records if r['bench'] == 'var_speed']
    assert [(r['batch'], r['variant']) for r in rows] == [(1, 'slow'), (1, 'fast'), (2, 'slow'), (2, 'fast')]
    for r in rows:
        assert r['var_ms'] > 0 and set(r['ours_ms']) == set(r['ours_over_var']) == {'tiny', 'tiny-p4'}
        assert all(v > 0 for v in [*r['ours_ms'].values(), *r['ours_over_var'].values()])
        relative = r['relative_to_reference']
        assert relative['tiny'] == 1.0 and relative['VAR-d2'] > 0 and relative['tiny-p4'] > 0

    table = stdout[stdout.index('== VAR-d2'):].splitlines()
    assert 'cpu, torch' in table[0]
    assert table[1].split() == ['batch', 'ours', 'VAR-d2', 'ms', 'tiny', 'ms', 'tiny-p4', 'ms', 'tiny/VAR', 'tiny-p4/VAR',
                                'VAR-d2', 'rel', 'tiny-p4', 'rel']
    assert len(table) == 6
    for line in table[2:]:
        assert all(float(cell) > 0 for cell in line.split()[2:])


def test_a_folder_without_var_stops_before_measuring(tmp_path):
    result = run('scripts/var_speed.py', '--var_repo', tmp_path, '--device', 'cpu', expect_ok=False, in_process=True)
    assert result.returncode == 2 and 'no models/var.py there' in result.stderr and 'Traceback' not in result.stderr
    assert 'measured' not in result.stdout
