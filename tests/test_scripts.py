import os
import shutil
import subprocess

import pytest

from conftest import REPO

pytestmark = pytest.mark.skipif(shutil.which('bash') is None, reason='the scripts are bash')

# script, a known variant name, the start of the script's own message for an unknown one
SEARCHES = [('gen_search.sh', 'old', 'unknown variant bogus: use old dropout'),
            ('tok_search.sh', 'control', 'unknown variant bogus: use control cond_gan'),
            ('table4.sh', 'titok', 'unknown row bogus: use titok spectral')]


def run_search(tmp_path, script, names, **env):
    """Runs scripts/<script> NAMES with a `python` on PATH that only records its arguments in tmp_path/calls, and env
    on top of the test's environment: -> (the finished process, the recorded calls)."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    (bin_dir / 'python').write_text(f'#!/bin/sh\necho "$*" >> {tmp_path / "calls"}\n')
    (bin_dir / 'python').chmod(0o755)
    env = {**os.environ, 'PATH': f"{bin_dir}{os.pathsep}{os.environ['PATH']}", 'GPUS': '1', 'TOK': 'tok.pt',
           'ROOT': str(tmp_path / 'root'), **env}
    result = subprocess.run(['bash', os.path.join('scripts', script), *names], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=60)
    calls = (tmp_path / 'calls').read_text().splitlines() if (tmp_path / 'calls').exists() else []
    return result, calls


@pytest.mark.parametrize('script,known,message', SEARCHES)
def test_search_stops_on_unknown_variant_before_any_run(tmp_path, script, known, message):
    result, calls = run_search(tmp_path, script, [known, 'bogus'])
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert calls == [] and not (tmp_path / 'root').exists()


@pytest.mark.parametrize('script,known', [(script, known) for script, known, _ in SEARCHES])
def test_search_runs_known_variants(tmp_path, script, known):
    result, calls = run_search(tmp_path, script, [known])
    assert result.returncode == 0, result.stderr
    assert any('train_' in call and os.path.join('root', known) in call for call in calls), calls


def test_tokens_per_step_trains_on_the_token_file_and_views_it_encoded(tmp_path):
    # train_gen.py refuses a token file whose views differ from its --augment (default 2)
    result, calls = run_search(tmp_path, 'tokens_per_step.sh', [])
    assert result.returncode == 0, result.stderr
    encode = next(call.split() for call in calls if '--encode_only' in call)
    trains = [call.split() for call in calls if 'train_gen.py' in call and '--encode_only' not in call]
    assert len(trains) == 3
    views = encode[encode.index('--augment') + 1]
    assert [train[train.index('--augment') + 1] if '--augment' in train else None for train in trains] == [views] * 3
    assert {train[train.index('--tokens') + 1] for train in trains} == {encode[encode.index('--tokens') + 1]}


@pytest.mark.parametrize('script, names, present, encoded', [
    ('gen_search.sh', ['old'], [], ['tokens_k2.npz', 'tokens_k8.npz']),
    ('gen_search.sh', ['old'], ['tokens_k8.npz'], ['tokens_k2.npz']),
    ('tokens_per_step.sh', [], [], ['tokens_k8.npz']),
    ('tokens_per_step.sh', [], ['tokens_k8.npz'], []),
])
def test_generator_searches_encode_only_the_token_files_not_there(tmp_path, script, names, present, encoded):
    (tmp_path / 'root').mkdir()
    for name in present:
        (tmp_path / 'root' / name).write_bytes(b'')
    result, calls = run_search(tmp_path, script, names)
    assert result.returncode == 0, result.stderr
    encodes = [call.split() for call in calls if '--encode_only' in call]
    assert [encode[encode.index('--tokens') + 1] for encode in encodes] == [str(tmp_path / 'root' / name) for name in encoded]


def test_table4_rows_train_their_ablation_seed_and_recipe_and_score_the_training_reconstructions(tmp_path):
    result, calls = run_search(tmp_path, 'table4.sh', ['titok_s1', 'full_alg1'])
    assert result.returncode == 0, result.stderr

    def calls_of(row, script):
        return [call.split() for call in calls if script in call and os.path.join('root', row) + os.sep in call]

    def value(call, flag):
        return call[call.index(flag) + 1]

    titok_tok, alg1_tok = calls_of('titok_s1', 'train_tok.py'), calls_of('full_alg1', 'train_tok.py')
    assert (value(titok_tok[0], '--ablation'), value(titok_tok[0], '--seed')) == ('titok', '1')
    assert '--full_prefix_prob' in titok_tok[0] and '--gan_full_only' in titok_tok[0]
    assert (value(alg1_tok[0], '--ablation'), value(alg1_tok[0], '--seed')) == ('full', '0')
    assert '--full_prefix_prob' not in alg1_tok[0] and '--gan_full_only' not in alg1_tok[0]
    assert [value(call, '--seed') for call in calls_of('titok_s1', 'train_gen.py')] == ['1']
    train_recon = next(call for call in titok_tok if '--eval_only' in call)  # the rfid_train stage
    assert value(train_recon, '--eval_data').endswith('train')
    assert any('recon_train.npz' in call and 'cifar10_train_stats.npz' in call for call in calls if 'fid.py' in call)


def test_superres_trains_16_px_models_by_the_cifar10_recipe_and_scores_test_images_and_samples_at_32_px(tmp_path):
    out = tmp_path / 'root'
    result, calls = run_search(tmp_path, 'superres_cifar.sh', [], OUT=str(out), DATA='cifar10')
    assert result.returncode == 0, result.stderr
    calls = [call.split() for call in calls]

    def value(call, flag):
        return call[call.index(flag) + 1]
    tok, = [call for call in calls if call[0] == 'train_tok.py']
    gen, = [call for call in calls if call[0] == 'train_gen.py']
    assert (value(tok, '--image_size'), value(tok, '--patch_size'), value(tok, '--gan_weight')) == ('16', '2', '0')
    assert '--full_prefix_prob' in tok and value(gen, '--tok_ckpt') == str(out / 'tok' / 'ckpt.pt')
    test, samples = [call for call in calls if call[0] == 'superres.py']
    assert value(test, '--input') == os.path.join('cifar10', 'test') and '--downsample' in test
    assert value(samples, '--input') == str(out / 'samples_16px' / 'samples_10000x16x16x3.npz') and '--downsample' not in samples
    for call in (test, samples):
        assert value(call, '--ckpt') == str(out / 'gen' / 'best.pt')
        assert value(call, '--fid_ref') == str(out / 'cifar10_train_stats.npz')
        assert call[call.index('--keep') + 1:call.index('--keep') + 6] == ['16', '20', '25', '28', '32']


def test_superres_stops_on_an_unknown_stage_before_any_run(tmp_path):
    result, calls = run_search(tmp_path, 'superres_cifar.sh', ['stats', 'bogus'], OUT=str(tmp_path / 'root'))
    assert result.returncode == 2 and 'unknown stage bogus: use stats models test samples' in result.stderr
    assert calls == [] and not (tmp_path / 'root').exists()
