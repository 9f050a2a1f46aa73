import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.skipif(shutil.which('bash') is None, reason='the scripts are bash')

# script, a known variant name, the start of the script's own message for an unknown one
SEARCHES = [('gen_search.sh', 'old', 'unknown variant bogus: use old dropout'),
            ('tok_search.sh', 'control', 'unknown variant bogus: use control cond_gan'),
            ('table4.sh', 'titok', 'unknown row bogus: use titok spectral')]


# a `python` that records its arguments and, as train_tok.py does when its run reaches --max_steps, writes its
# --eval_npz (STOP_SHORT=1: as a piece of a run that stops short of it). FAIL_MATCH=GLOB: a call whose arguments
# match fails, as on a lost machine. HOLD_DIR=DIR: each trainer call holds a lock file in DIR for half a second and
# appends to DIR/seen how many are held, so that the largest number there is the trainers' concurrency.
STUB_PYTHON = """#!/bin/sh
[ "$1" = - ] && [ -n "$REAL_SUMMARY" ] && exec {python} "$@"  # a script's own summary, run for real when asked
echo "$*" >> {calls}
[ -n "$FAIL_MATCH" ] && case "$*" in $FAIL_MATCH) exit 1 ;; esac
if [ -n "$HOLD_DIR" ]; then case "$*" in train_*)
  touch "$HOLD_DIR/running.$$"; ls "$HOLD_DIR" | grep -c '^running' >> "$HOLD_DIR/seen"
  sleep 0.5; rm "$HOLD_DIR/running.$$" ;;
esac; fi
[ -n "$STOP_SHORT" ] && exit 0
previous=
for arg in "$@"; do
  if [ "$previous" = --eval_npz ]; then mkdir -p "$(dirname "$arg")"; : > "$arg"; fi
  previous=$arg
done
exit 0
"""


def value(call, flag):
    return call[call.index(flag) + 1]


def run_search(tmp_path, script, names, **env):
    """Runs scripts/<script> NAMES with the stub `python` on PATH and env added to the environment (a value None:
    that variable unset): -> (the finished process, the recorded calls)."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    (bin_dir / 'python').write_text(STUB_PYTHON.format(calls=tmp_path / 'calls', python=sys.executable))
    (bin_dir / 'python').chmod(0o755)
    env = {**os.environ, 'PATH': f"{bin_dir}{os.pathsep}{os.environ['PATH']}", 'GPUS': '1', 'TOK': 'tok.pt',
           'ROOT': str(tmp_path / 'root'), **env}
    env = {name: setting for name, setting in env.items() if setting is not None}
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


def test_tok_search_length_and_seed_suffixes_combine_with_any_recipe(tmp_path):
    result, calls = run_search(tmp_path, 'tok_search.sh', ['lpips_k8192_20k_s1', 'lpips_k4096_dim16'])
    assert result.returncode == 0, result.stderr
    trains = {os.path.basename(os.path.dirname(value(call, '--out_dir'))): call
              for call in (call.split() for call in calls) if call[0] == 'train_tok.py'}
    settings = {name: (value(call, '--max_steps'), value(call, '--disc_start'), value(call, '--codebook_size'),
                       value(call, '--seed')) for name, call in trains.items()}
    assert settings == {'lpips_k8192_20k_s1': ('20000', '12000', '8192', '1'),
                        'lpips_k4096_dim16': ('10000', '6000', '4096', '0')}
    assert value(trains['lpips_k4096_dim16'], '--code_dim') == '16' and '--code_dim' not in trains['lpips_k8192_20k_s1']


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

    titok_tok, alg1_tok = calls_of('titok_s1', 'train_tok.py'), calls_of('full_alg1', 'train_tok.py')
    assert (value(titok_tok[0], '--ablation'), value(titok_tok[0], '--seed')) == ('titok', '1')
    assert '--full_prefix_prob' in titok_tok[0] and '--gan_full_only' in titok_tok[0]
    assert (value(alg1_tok[0], '--ablation'), value(alg1_tok[0], '--seed')) == ('full', '0')
    assert '--full_prefix_prob' not in alg1_tok[0] and '--gan_full_only' not in alg1_tok[0]
    assert [value(call, '--seed') for call in calls_of('titok_s1', 'train_gen.py')] == ['1']
    train_recon = next(call for call in titok_tok if '--eval_only' in call)  # the rfid_train stage
    assert value(train_recon, '--eval_data').endswith('train')
    recon_fids = [call for call in calls if 'fid.py' in call and 'recon_train.npz' in call]
    assert recon_fids and all('cifar10_train_stats.npz' in call and '--no-pr' not in call for call in recon_fids)
    # the campaign's protocol, whatever cifar10.sh's final figures do: best.pt, swept
    samplers = calls_of('titok_s1', 'sweep.py') + calls_of('titok_s1', 'sample.py')
    assert len(samplers) == 2
    assert all(value(call, '--ckpt').endswith(os.path.join('gen', 'best.pt')) for call in samplers)


def test_table4_alg1_rows_each_add_back_one_departure_from_algorithm_1(tmp_path):
    rows = ['alg1_full_prefix', 'alg1_gan_full_only']
    result, calls = run_search(tmp_path, 'table4.sh', rows)
    assert result.returncode == 0, result.stderr
    toks = {row: next(call.split() for call in calls if 'train_tok.py' in call and os.path.join('root', row) + os.sep in call)
            for row in rows}
    assert all(value(tok, '--ablation') == 'full' and value(tok, '--seed') == '0' for tok in toks.values())
    assert value(toks['alg1_full_prefix'], '--full_prefix_prob') == '0.5' and '--gan_full_only' not in toks['alg1_full_prefix']
    assert '--gan_full_only' in toks['alg1_gan_full_only'] and '--full_prefix_prob' not in toks['alg1_gan_full_only']


def test_tok_search_seed_suffix_trains_the_same_variant_with_that_seed(tmp_path):
    result, calls = run_search(tmp_path, 'tok_search.sh', ['lpips_k4096', 'lpips_k4096_s1'])
    assert result.returncode == 0, result.stderr
    trains = {os.path.basename(os.path.dirname(value(call, '--out_dir'))): call
              for call in map(str.split, calls) if call[0] == 'train_tok.py'}
    assert sorted(trains) == ['lpips_k4096', 'lpips_k4096_s1']
    assert (value(trains['lpips_k4096'], '--seed'), value(trains['lpips_k4096_s1'], '--seed')) == ('0', '1')

    def without_seed_and_paths(call):
        i = call.index('--seed')
        return [arg for arg in call[:i] + call[i + 2:] if 'lpips_k4096' not in arg]
    assert without_seed_and_paths(trains['lpips_k4096']) == without_seed_and_paths(trains['lpips_k4096_s1'])


def test_tok_search_lpips64_variants_upsample_to_64_px_only_and_keep_the_rest_of_lpips_k4096(tmp_path):
    result, calls = run_search(tmp_path, 'tok_search.sh', ['lpips_k4096', 'lpips64_k4096', 'lpips64_k4096_20k'])
    assert result.returncode == 0, result.stderr
    trains = {os.path.basename(os.path.dirname(value(call, '--out_dir'))): call
              for call in map(str.split, calls) if call[0] == 'train_tok.py'}
    assert [trains[v].count('--lpips_resize') for v in sorted(trains)] == [1, 1, 1]
    assert {v: (value(c, '--lpips_resize'), value(c, '--max_steps')) for v, c in trains.items()} == {
        'lpips_k4096': ('128', '10000'), 'lpips64_k4096': ('64', '10000'), 'lpips64_k4096_20k': ('64', '20000')}

    def recipe(call):  # the call without the LPIPS resolution, the length (and the GAN start it sets) and the paths
        varying = ('--lpips_resize', '--max_steps', '--disc_start', '--out_dir', '--eval_npz')
        return [arg for i, arg in enumerate(call) if arg not in varying and call[i - 1] not in varying]
    assert recipe(trains['lpips_k4096']) == recipe(trains['lpips64_k4096']) == recipe(trains['lpips64_k4096_20k'])


def test_gen_search_length_suffix_trains_the_same_variant_for_that_many_thousand_steps(tmp_path):
    result, calls = run_search(tmp_path, 'gen_search.sh', ['augment_ema', 'augment_ema_3k'], STEPS='6000')
    assert result.returncode == 0, result.stderr
    trains = {os.path.basename(value(call, '--out_dir')): call for call in map(str.split, calls)
              if call[0] == 'train_gen.py' and '--encode_only' not in call}
    assert sorted(trains) == ['augment_ema', 'augment_ema_3k']
    assert [trains[v].count('--max_steps') for v in sorted(trains)] == [1, 1]
    assert (value(trains['augment_ema'], '--max_steps'), value(trains['augment_ema_3k'], '--max_steps')) == ('6000', '3000')

    def without_length_and_paths(call):
        varying = ('--max_steps', '--out_dir')
        return [arg for i, arg in enumerate(call) if arg not in varying and call[i - 1] not in varying]
    assert without_length_and_paths(trains['augment_ema']) == without_length_and_paths(trains['augment_ema_3k'])


def test_gen_search_continues_a_cut_off_variant_from_its_checkpoint(tmp_path):
    cut_off = tmp_path / 'root' / 'strong_ema'
    cut_off.mkdir(parents=True)
    (cut_off / 'ckpt.pt').write_bytes(b'')
    result, calls = run_search(tmp_path, 'gen_search.sh', ['augment_ema', 'strong_ema'])
    assert result.returncode == 0, result.stderr
    trains = {os.path.basename(value(call, '--out_dir')): call for call in map(str.split, calls)
              if call[0] == 'train_gen.py' and '--encode_only' not in call}
    assert '--resume' in trains['strong_ema'] and '--resume' not in trains['augment_ema']
    assert (cut_off / 'finished').exists() and (tmp_path / 'root' / 'augment_ema' / 'finished').exists()


def test_gen_search_summary_marks_a_variant_whose_run_failed_as_not_finished(tmp_path):
    for variant, nll in (('augment_ema', 219.0), ('strong_ema', 217.0)):  # both evaluated before the failure
        (tmp_path / 'root' / variant).mkdir(parents=True)
        evaluation = dict(step=2000, val_nll=nll, train_nll=nll / 1.05, val_over_train=1.05)
        (tmp_path / 'root' / variant / 'log.jsonl').write_text(json.dumps(evaluation) + '\n')
    for tokens in ('tokens_k2.npz', 'tokens_k8.npz'):
        (tmp_path / 'root' / tokens).write_bytes(b'')
    result, _ = run_search(tmp_path, 'gen_search.sh', ['augment_ema', 'strong_ema'], REAL_SUMMARY='1',
                           FAIL_MATCH='train_gen.py*--out_dir*/strong_ema *')
    assert result.returncode != 0 and 'variant strong_ema failed' in result.stderr
    rows = {row['variant']: row for row in json.loads((tmp_path / 'root' / 'summary.json').read_text())}
    assert rows['augment_ema']['finished'] and not rows['strong_ema']['finished']
    assert not (tmp_path / 'root' / 'strong_ema' / 'finished').exists()
    assert 'not finished (step 2000)' in result.stdout


def test_gen_search_summary_records_the_recipe_each_variant_trained(tmp_path):
    (tmp_path / 'root' / 'd12_ema_3k').mkdir(parents=True)
    evaluation = dict(step=2000, val_nll=219.0, train_nll=208.0, val_over_train=219.0 / 208.0)
    (tmp_path / 'root' / 'd12_ema_3k' / 'log.jsonl').write_text(json.dumps(evaluation) + '\n')
    result, calls = run_search(tmp_path, 'gen_search.sh', ['d12_ema_3k'], REAL_SUMMARY='1')
    assert result.returncode == 0, result.stderr
    train = next(call for call in calls if call.startswith('train_gen.py') and '--encode_only' not in call)
    row, = json.loads((tmp_path / 'root' / 'summary.json').read_text())
    assert row['steps'] == 3000 and f"--max_steps 3000 {row['train_gen_flags']}" in train
    assert '--preset cifar_d12' in row['train_gen_flags'] and '--ema 0.9995' in row['train_gen_flags']


def test_gen_search_refuses_a_length_suffix_on_an_unknown_variant(tmp_path):
    result, calls = run_search(tmp_path, 'gen_search.sh', ['bogus_3k'])
    assert result.returncode == 2 and 'unknown variant bogus_3k' in result.stderr and calls == []


def write_gen_search_summary(search, ratios_and_nlls, unfinished=()):
    search.mkdir()
    rows = [dict(variant=variant, best_step=2500, best_val_nll=nll, train_nll_at_best=nll / ratio, ratio_at_best=ratio,
                 finished=variant not in unfinished)
            for variant, (ratio, nll) in ratios_and_nlls.items()]
    (search / 'summary.json').write_text(json.dumps(rows))


def test_sweep_search_samples_the_lowest_validation_nll_among_gen_search_variants_that_generalise(tmp_path):
    search = tmp_path / 'gen_search'
    # d12 has the lowest NLL but overfits past the bound; strong_ema is the best of the others
    write_gen_search_summary(search, {'augment_ema': (1.07, 219.8), 'd12': (1.15, 210.0), 'strong_ema': (1.04, 217.5)})
    result, calls = run_search(tmp_path, 'sweep_search.sh', [], GEN_SEARCH=str(search), REAL_SUMMARY='1')
    assert result.returncode == 0, result.stderr
    sweeps = [call.split() for call in calls if call.startswith('sweep.py')]
    assert sweeps and all(value(call, '--ckpt') == str(search / 'strong_ema' / 'best.pt') for call in sweeps)
    chosen = json.load(open(tmp_path / 'root' / 'generator.json'))
    assert (chosen['variant'], chosen['max_ratio']) == ('strong_ema', 1.1)


def test_sweep_search_does_not_pick_a_gen_search_variant_cut_short(tmp_path):
    search = tmp_path / 'gen_search'
    write_gen_search_summary(search, {'augment_ema': (1.05, 219.8), 'strong_ema': (1.04, 217.5)},
                             unfinished={'strong_ema'})
    result, calls = run_search(tmp_path, 'sweep_search.sh', [], GEN_SEARCH=str(search), REAL_SUMMARY='1')
    assert result.returncode == 0, result.stderr
    sweeps = [call.split() for call in calls if call.startswith('sweep.py')]
    assert sweeps and all(value(call, '--ckpt') == str(search / 'augment_ema' / 'best.pt') for call in sweeps)


def test_sweep_search_stops_when_no_gen_search_variant_generalises(tmp_path):
    search = tmp_path / 'gen_search'
    write_gen_search_summary(search, {'old': (1.20, 219.0), 'd12': (1.15, 210.0)})
    result, calls = run_search(tmp_path, 'sweep_search.sh', [], GEN_SEARCH=str(search), REAL_SUMMARY='1')
    assert result.returncode != 0
    assert 'no variant' in result.stderr and 'old 1.200' in result.stderr and 'MAX_RATIO' in result.stderr
    assert not any(call.startswith('sweep.py') for call in calls)


@pytest.mark.parametrize('runs_per_gpu, most_at_once', [(None, 1), ('', 3)])
def test_tok_search_trains_one_variant_at_a_time_per_gpu_unless_told_otherwise(tmp_path, runs_per_gpu, most_at_once):
    # one tokenizer fills an H100: sharing it only delays the first result
    (tmp_path / 'hold').mkdir()
    result, _ = run_search(tmp_path, 'tok_search.sh', ['lpips_k4096', 'lpips_k8192', 'lpips_k16384'],
                           HOLD_DIR=str(tmp_path / 'hold'), RUNS_PER_GPU=runs_per_gpu)
    assert result.returncode == 0, result.stderr
    seen = [int(n) for n in (tmp_path / 'hold' / 'seen').read_text().split()]
    assert len(seen) == 3 and max(seen) == most_at_once


def test_tok_search_summary_gives_each_variants_spread_over_its_seeds(tmp_path):
    for name, fid in (('lpips_k4096', 20.0), ('lpips_k4096_s1', 28.5), ('lpips_k8192', 18.0)):
        tok = tmp_path / 'root' / name / 'tok'
        tok.mkdir(parents=True)
        (tok / 'rfid_val.json').write_text(json.dumps({'fid': fid}))
        (tok / 'eval.jsonl').write_text(json.dumps(dict(
            step=10000, data='val', psnr_vs_image_at_N=21.0, psnr_vs_lowpass_at={'1': 23.0}, codebook_used=0.99,
            codebook_perplexity=3000.0, run_wall_s=600.0)) + '\n')
    result, calls = run_search(tmp_path, 'tok_search.sh', ['lpips_k4096', 'lpips_k4096_s1', 'lpips_k8192'],
                               REAL_SUMMARY='1')
    assert result.returncode == 0, result.stderr
    assert not any('train_tok.py' in call for call in calls)
    assert 'lpips_k4096: rFID val 20.00 / 28.50 over seeds 0 / 1, spread 8.50' in result.stdout
    assert 'lpips_k8192: rFID val' not in result.stdout  # one seed: no spread
    rows = json.load(open(tmp_path / 'root' / 'summary.json'))
    assert [(r['base'], r['seed']) for r in rows] == [('lpips_k4096', 0), ('lpips_k4096', 1), ('lpips_k8192', 0)]


@pytest.mark.parametrize('script, names, env', [
    ('tok_search.sh', ['lpips_k4096', 'lpips_k4096_40k'], {}),
    ('gen_search.sh', ['augment_ema', 'd12_strong_ema'], {}),
    ('sweep_search.sh', [], {'GEN_CKPT': 'gen/best.pt'}),
])
def test_searches_select_on_the_split_and_never_read_cifar10_test(tmp_path, script, names, env):
    data, select = tmp_path / 'cifar10', tmp_path / 'select'
    result, calls = run_search(tmp_path, script, names, DATA=str(data), SELECT=str(select), **env)
    assert result.returncode == 0, result.stderr
    assert not any(str(data / 'test') in call for call in calls), calls
    calls = [call.split() for call in calls]
    # the split is built (or checked) from the training images before anything reads it
    assert calls[0][:3] == [os.path.join('scripts', 'selection_split.py'), str(data / 'train'), str(select)]
    train, val = str(select / 'train'), str(select / 'val')
    if script == 'tok_search.sh':
        # the variants run at the same time: their calls come in any order
        trains = {os.path.basename(os.path.dirname(value(call, '--out_dir'))): call for call in calls if call[0] == 'train_tok.py'}
        assert {name: value(call, '--max_steps') for name, call in trains.items()} == {'lpips_k4096': '10000',
                                                                                      'lpips_k4096_40k': '40000'}
        assert all((value(call, '--data'), value(call, '--eval_data')) == (train, val) for call in trains.values())
        assert all(value(call, '--codebook_size') == '4096' and '--lpips_resize' in call for call in trains.values())
        rfids = [call for call in calls if call[0] == 'fid.py']
        assert [(call[1].endswith('recon_val.npz'), call[2], call[call.index('--json') + 1].endswith('rfid_val.json'))
                for call in rfids] == [(True, val, True)] * 2
    elif script == 'gen_search.sh':
        encodes = [call for call in calls if '--encode_only' in call]
        assert {(value(call, '--data'), value(call, '--val_data')) for call in encodes} == {(train, val)}
        trains = {os.path.basename(value(call, '--out_dir')): call for call in calls
                  if call[0] == 'train_gen.py' and '--encode_only' not in call}
        assert sorted(trains) == names
        assert all((value(call, '--data'), value(call, '--val_data')) == (train, val) for call in trains.values())
        assert value(trains['d12_strong_ema'], '--preset') == 'cifar_d12' and value(trains['d12_strong_ema'], '--ema') == '0.9995'
    else:
        stats = str(select / 'train_stats.npz')
        assert [call for call in calls if call[0] == 'fid.py'] == [['fid.py', '--save-stats', stats, train]]
        sweeps = [call for call in calls if call[0] == 'sweep.py']
        assert all((value(call, '--ckpt'), value(call, '--ref')) == ('gen/best.pt', stats) for call in sweeps)
        round_one = sweeps[0]
        cfgs = round_one[round_one.index('--cfg') + 1:round_one.index('--cfg_ramp')]
        assert cfgs == ['1', '1.5', '2', '3', '4'] and value(round_one, '--cfg_ramp') == 'off'
        assert round_one[round_one.index('--cfg_ramp') + 2] == 'on'
        assert len(sweeps) == 2 and '--top_k' in sweeps[1]  # the search keeps round 2, which cifar10.sh skips


def test_cifar10_final_figures_train_on_all_of_train_and_score_on_test(tmp_path):
    data = tmp_path / 'cifar10'
    result, calls = run_search(tmp_path, 'cifar10.sh', [], DATA=str(data), OUT=str(tmp_path / 'out'))
    assert result.returncode == 0, result.stderr
    calls = [call.split() for call in calls]
    assert not any('selection_split.py' in ' '.join(call) for call in calls)
    train, test = str(data / 'train'), str(data / 'test')
    tok = next(call for call in calls if call[0] == 'train_tok.py')
    assert (value(tok, '--data'), value(tok, '--eval_data')) == (train, test) and '--steps_this_run' not in tok
    # the selection split's winning length, its GAN from 60% of it (docs/results.md, "On the selection split")
    assert (value(tok, '--max_steps'), value(tok, '--disc_start')) == ('20000', '12000')
    rfid = next(call for call in calls if call[0] == 'fid.py' and call[1].endswith('recon_test.npz'))
    assert rfid[2] == test and value(rfid, '--json').endswith(os.path.join('tok', 'rfid.json'))
    assert '--no-pr' not in rfid  # tok_rfid.json reports precision and recall beside rFID and sFID
    gen = next(call for call in calls if call[0] == 'train_gen.py')
    assert (value(gen, '--data'), value(gen, '--val_data')) == (train, test)
    # the selection split's generator pick, d12_strong_ema_3k
    assert (value(gen, '--preset'), value(gen, '--max_steps'), value(gen, '--ema')) == ('cifar_d12', '3000', '0.9995')
    assert value(gen, '--dropout') == value(gen, '--drop_path') == '0.2'
    stats = next(call for call in calls if '--save-stats' in call)
    assert stats[-1] == train  # gFID's reference: the 50,000 training images
    # test chooses nothing: no sweep against the gFID's reference, the last checkpoint (best.pt is kept by test's
    # NLL) at the selection split's best sampling setting
    assert not any(call[0] == 'sweep.py' and '--truncate' not in call for call in calls)
    sample = next(call for call in calls if call[0] == 'sample.py')
    assert value(sample, '--ckpt') == str(tmp_path / 'out' / 'gen' / 'ckpt.pt')
    assert (value(sample, '--cfg'), value(sample, '--temperature')) == ('1.5', '1.0') and '--cfg_ramp' in sample
    truncate = next(call for call in calls if call[0] == 'sweep.py')
    assert value(truncate, '--ref') == value(stats, '--save-stats')
    assert value(truncate, '--ckpt') == value(sample, '--ckpt')
    timings = [json.loads(line) for line in open(tmp_path / 'out' / 'stage_seconds.jsonl')]
    assert [t['stage'] for t in timings] == ['stats', 'tok', 'gen', 'sample', 'fid', 'truncate']
    assert all(isinstance(t['seconds'], int) and t['seconds'] >= 0 for t in timings)


@pytest.mark.parametrize('select', [None, 'split'])
def test_cifar10_decoder_stage_fine_tunes_the_tokenizers_decoder_and_the_later_stages_use_it(tmp_path, select):
    data, out = tmp_path / 'cifar10', tmp_path / 'out'
    select = select and str(tmp_path / select)
    result, calls = run_search(tmp_path, 'cifar10.sh', [], DATA=str(data), OUT=str(out), DECODER_STEPS='5000',
                               SELECT=select, STATS=str(tmp_path / 'stats.npz'))
    assert result.returncode == 0, result.stderr
    calls = [call.split() for call in calls]
    tok, decoder = [call for call in calls if call[0] == 'train_tok.py']
    train, held_out = (f'{select}/train', f'{select}/val') if select else (str(data / 'train'), str(data / 'test'))
    assert value(decoder, '--init_from') == value(tok, '--out_dir') + '/ckpt.pt' == str(out / 'tok' / 'ckpt.pt')
    assert (value(decoder, '--data'), value(decoder, '--eval_data')) == (train, held_out)
    # a trained decoder, a new discriminator: the GAN from the start; no code restarts, the codes being kept
    assert (value(decoder, '--max_steps'), value(decoder, '--disc_start'), value(decoder, '--min_lr')) == ('5000', '0', '1e-05')
    assert '--restart_every' not in decoder and value(decoder, '--codebook_size') == value(tok, '--codebook_size')
    rfid = next(call for call in calls if call[0] == 'fid.py' and call[1].startswith(str(out / 'decoder')))
    assert rfid[2] == held_out and value(rfid, '--json') == str(out / 'decoder' / ('rfid_val.json' if select else 'rfid.json'))
    gen = next(call for call in calls if call[0] == 'train_gen.py')
    assert value(gen, '--tok_ckpt') == str(out / 'decoder' / 'ckpt.pt')
    timings = [json.loads(line)['stage'] for line in open(out / 'stage_seconds.jsonl')]
    assert timings == ['stats', 'tok', 'decoder', 'gen', 'sample', 'fid', 'truncate']


def test_cifar10_scores_a_tokenizer_trained_elsewhere_as_the_tok_stage_would(tmp_path):
    data, out = tmp_path / 'cifar10', tmp_path / 'out'
    result, calls = run_search(tmp_path, 'cifar10.sh', ['score_tok'], DATA=str(data), OUT=str(out))
    assert result.returncode == 0, result.stderr
    score, rfid = [call.split() for call in calls]
    assert value(score, '--resume') == str(out / 'tok' / 'ckpt.pt') and '--eval_only' in score
    assert value(score, '--eval_data') == rfid[2] == str(data / 'test')
    assert value(score, '--eval_npz') == rfid[1] and value(rfid, '--json') == str(out / 'tok' / 'rfid.json')


def test_own_data_keeps_best_by_its_held_out_split_and_its_measured_generator_length(tmp_path):
    out = tmp_path / 'out'
    for split in ('train', 'test'):
        (out / 'data' / split / 'images').mkdir(parents=True)
        (out / 'data' / split / 'images' / '000000.png').write_bytes(b'')
    result, calls = run_search(tmp_path, 'own_data.sh', ['gen', 'sample'], DATA=str(tmp_path / 'images'), OUT=str(out))
    assert result.returncode == 0, result.stderr
    calls = [call.split() for call in calls]
    gen = next(call for call in calls if call[0] == 'train_gen.py')
    sample = next(call for call in calls if call[0] == 'sample.py')
    # its held-out split is the user's own, not a test set: best.pt by it, as measured, at 6,000 steps
    assert value(gen, '--max_steps') == '6000' and value(sample, '--ckpt') == str(out / 'gen' / 'best.pt')


def test_cifar10_gen_stage_trains_a_search_winner_given_as_preset_and_flags(tmp_path):
    result, calls = run_search(tmp_path, 'cifar10.sh', ['gen'], OUT=str(tmp_path / 'out'), GEN_PRESET='cifar_d12',
                               GEN_FLAGS='--dropout 0.2 --drop_path 0.2')
    assert result.returncode == 0, result.stderr
    gen, = [call.split() for call in calls]
    assert value(gen, '--preset') == 'cifar_d12' and gen[-4:] == ['--dropout', '0.2', '--drop_path', '0.2']
    assert value(gen, '--ema') == '0.9995' and value(gen, '--augment') == '8'  # the stage's own flags stay


def write_search_picks(search, **record):
    (search / 'sweep').mkdir(parents=True)
    (search / 'generator.json').write_text(json.dumps(dict(variant='d12_ema_4k', best_val_nll=219.0, best_step=1500,
                                                           **record)))
    (search / 'sweep' / 'best_flags').write_text('--cfg 1.25 --cfg_ramp off --temperature 1.2 --top_k 0 --top_p 0.0\n')


def test_cifar10_from_search_trains_the_picked_recipe_on_all_of_train_and_samples_at_the_picked_setting(tmp_path):
    search, data, out = tmp_path / 'sweep_search', tmp_path / 'cifar10', tmp_path / 'out'
    write_search_picks(search, steps=4000, train_gen_flags='--preset cifar_d12 --augment 8 --dropout 0.1 --ema 0.9995')
    result, calls = run_search(tmp_path, 'cifar10.sh', ['gen', 'sample', 'truncate'], DATA=str(data), OUT=str(out),
                               FROM_SEARCH=str(search), GEN_FLAGS='--seed 3', REAL_SUMMARY='1')
    assert result.returncode == 0, result.stderr
    calls = [call.split() for call in calls]
    gen = next(call for call in calls if call[0] == 'train_gen.py')
    presets = [gen[i + 1] for i, flag in enumerate(gen) if flag == '--preset']
    assert presets[-1] == 'cifar_d12' and value(gen, '--max_steps') == '4000' and gen[-2:] == ['--seed', '3']
    assert (value(gen, '--data'), value(gen, '--val_data')) == (str(data / 'train'), str(data / 'test'))
    for sampler in (next(call for call in calls if call[0] == name) for name in ('sample.py', 'sweep.py')):
        assert (value(sampler, '--cfg'), value(sampler, '--temperature')) == ('1.25', '1.2')
        assert value(sampler, '--ckpt') == str(out / 'gen' / 'ckpt.pt')


def test_cifar10_samples_the_checkpoint_of_the_selection_splits_best_step_when_asked(tmp_path):
    search, out = tmp_path / 'sweep_search', tmp_path / 'out'
    write_search_picks(search, steps=4000, train_gen_flags='--preset cifar_d12 --ema 0.9995')
    result, calls = run_search(tmp_path, 'cifar10.sh', ['gen', 'sample'], OUT=str(out), FROM_SEARCH=str(search),
                               GEN_SAMPLE_STEP='best', REAL_SUMMARY='1')
    assert result.returncode == 0, result.stderr
    gen, sample = [call.split() for call in calls if call.startswith(('train_gen.py', 'sample.py'))]
    # checkpoints at 1,500, 3,000 and the last step 4,000, all three kept as step-tagged copies
    assert (value(gen, '--ckpt_every'), value(gen, '--keep')) == ('1500', '3')
    assert value(sample, '--ckpt') == str(out / 'gen' / 'ckpt_0001500.pt')


@pytest.mark.parametrize('env', [dict(GEN_SAMPLE_STEP='4000'), dict(GEN_SAMPLE_STEP='best'),
                                 dict(GEN_SAMPLE_STEP='1500', SELECT='split')])
def test_cifar10_refuses_a_sample_step_outside_the_final_generators_run(tmp_path, env):
    result, calls = run_search(tmp_path, 'cifar10.sh', ['gen'], OUT=str(tmp_path / 'out'), **env)
    assert result.returncode == 2 and 'GEN_SAMPLE_STEP' in result.stderr
    assert not any(call.startswith('train_gen.py') for call in calls)


def test_cifar10_from_search_stops_on_a_record_without_its_recipe(tmp_path):
    search = tmp_path / 'sweep_search'
    write_search_picks(search)  # as sweep_search.sh wrote it before gen_search.sh recorded recipes
    result, calls = run_search(tmp_path, 'cifar10.sh', ['gen'], OUT=str(tmp_path / 'out'), FROM_SEARCH=str(search),
                               REAL_SUMMARY='1')
    assert result.returncode != 0 and 'GEN_PRESET, GEN_FLAGS and GEN_STEPS' in result.stderr
    assert not any(call.startswith('train_gen.py') for call in calls)


@pytest.mark.parametrize('script, stages', [('table4.sh', ['titok']), ('superres_cifar.sh', ['gen']),
                                            ('own_data.sh', ['gen'])])
def test_campaigns_keep_the_cifar_d8_generator_they_were_measured_with(tmp_path, script, stages):
    out = tmp_path / 'out'
    (out / 'data' / 'train' / 'images').mkdir(parents=True)  # own_data.sh's split, as its split stage leaves it
    (out / 'data' / 'train' / 'images' / '000000.png').write_bytes(b'')
    result, calls = run_search(tmp_path, script, stages, DATA=str(tmp_path / 'cifar10'), OUT=str(out))
    assert result.returncode == 0, result.stderr
    gen = next(call.split() for call in calls if call.startswith('train_gen.py'))
    assert value(gen, '--preset') == 'cifar_d8' and value(gen, '--dropout') == value(gen, '--drop_path') == '0.1'


def test_tok_stage_in_pieces_continues_its_checkpoint_and_scores_only_the_whole_tokenizer(tmp_path):
    (tmp_path / 'out' / 'tok').mkdir(parents=True)
    (tmp_path / 'out' / 'tok' / 'ckpt.pt').write_bytes(b'')
    piece, calls = run_search(tmp_path, 'cifar10.sh', ['tok', 'gen'], OUT=str(tmp_path / 'out'), TOK_CHUNK='10000',
                              STOP_SHORT='1')
    assert piece.returncode == 0, piece.stderr
    assert len(calls) == 1 and '--resume' in calls[0].split() and value(calls[0].split(), '--steps_this_run') == '10000'
    assert 'run the same command again to continue' in piece.stderr  # neither rFID nor the generator yet
    (tmp_path / 'calls').unlink()
    shutil.rmtree(tmp_path / 'bin')
    last, calls = run_search(tmp_path, 'cifar10.sh', ['tok'], OUT=str(tmp_path / 'out'), TOK_CHUNK='10000')
    assert last.returncode == 0, last.stderr
    assert [call.split()[0] for call in calls] == ['train_tok.py', 'fid.py']


def test_superres_trains_16_px_models_by_the_cifar10_recipe_and_scores_test_images_and_samples_at_32_px(tmp_path):
    out = tmp_path / 'root'
    result, calls = run_search(tmp_path, 'superres_cifar.sh', [], OUT=str(out), DATA='cifar10')
    assert result.returncode == 0, result.stderr
    calls = [call.split() for call in calls]
    tok, = [call for call in calls if call[0] == 'train_tok.py']
    gen, = [call for call in calls if call[0] == 'train_gen.py']
    assert (value(tok, '--image_size'), value(tok, '--patch_size'), value(tok, '--gan_weight')) == ('16', '2', '0')
    assert '--full_prefix_prob' in tok and value(gen, '--tok_ckpt') == str(out / 'tok' / 'ckpt.pt')
    assert value(gen, '--max_steps') == '3000'  # the measured run's length
    assert value(tok, '--max_steps') == '10000'  # the same for the tokenizer (cifar10.sh's: 20,000)
    test, samples = [call for call in calls if call[0] == 'superres.py']
    assert value(test, '--input') == os.path.join('cifar10', 'test') and '--downsample' in test
    assert value(samples, '--input') == str(out / 'samples_16px' / 'samples_10000x16x16x3.npz') and '--downsample' not in samples
    for call in (test, samples):
        assert value(call, '--ckpt') == str(out / 'gen' / 'best.pt')
        assert value(call, '--fid_ref') == str(out / 'cifar10_train_stats.npz')
        assert call[call.index('--keep') + 1:call.index('--keep') + 6] == ['16', '20', '25', '28', '32']


def test_superres_with_a_tag_writes_beside_the_first_run_and_reuses_its_16_px_samples(tmp_path):
    out = tmp_path / 'root'
    samples16 = out / 'samples_16px' / 'samples_10000x16x16x3.npz'
    samples16.parent.mkdir(parents=True)
    samples16.write_bytes(b'')
    result, calls = run_search(tmp_path, 'superres_cifar.sh', ['test', 'samples'], OUT=str(out), DATA='cifar10',
                               SR_FLAGS='--keep_input_band', SR_TAG='_band')
    assert result.returncode == 0, result.stderr
    calls = [call.split() for call in calls]
    assert [call[0] for call in calls] == ['superres.py', 'superres.py']  # no sampling: the 16 px samples exist
    assert [value(call, '--out') for call in calls] == [str(out / 'test_band'), str(out / 'samples_band')]
    assert all('--keep_input_band' in call for call in calls)
    assert value(calls[1], '--input') == str(samples16)


def test_superres_stops_on_an_unknown_stage_before_any_run(tmp_path):
    result, calls = run_search(tmp_path, 'superres_cifar.sh', ['stats', 'bogus'], OUT=str(tmp_path / 'root'))
    assert result.returncode == 2 and 'unknown stage bogus: use stats tok gen test samples' in result.stderr
    assert calls == [] and not (tmp_path / 'root').exists()


@pytest.mark.parametrize('script, label, names, done, trainer', [
    ('table4.sh', 'row', ['titok', 'full'], os.path.join('samples', 'fid.json'), 'train_tok.py'),
    ('tok_search.sh', 'variant', ['lpips_k4096', 'lpips_k8192'], os.path.join('tok', 'rfid_val.json'), 'train_tok.py'),
    ('gen_search.sh', 'variant', ['augment_ema_3k', 'strong_ema_3k'], 'finished', 'train_gen.py'),
])
def test_rerun_trains_only_unfinished_variants_and_keeps_finished_ones_logs(tmp_path, script, label, names, done,
                                                                             trainer):
    env = dict(DATA=str(tmp_path / 'cifar10'), SELECT=str(tmp_path / 'select'))
    finished, unfinished = (tmp_path / 'root' / name for name in names)
    for folder in (finished, unfinished):
        (folder / os.path.dirname(done)).mkdir(parents=True, exist_ok=True)
    for tokens in ('tokens_k2.npz', 'tokens_k8.npz'):  # gen_search.sh's, encoded by the first run
        (tmp_path / 'root' / tokens).write_bytes(b'')
    (finished / done).write_text('{"fid": 98.4}')
    (finished / 'run.log').write_text('the training log\n')
    result, calls = run_search(tmp_path, script, names, **env)
    assert result.returncode == 0, result.stderr
    assert f'{label} {names[0]}: finished earlier' in result.stdout
    assert (finished / 'run.log').read_text() == 'the training log\n'
    def writes_to(call, name):  # a path in the call is that folder or lies under it
        return any(os.path.join('root', name) + end in call + ' ' for end in (os.sep, ' '))
    assert not any(writes_to(call, names[0]) for call in calls if 'train_' in call)
    assert any(writes_to(call, names[1]) for call in calls if trainer in call)

    calls_before = len(calls)
    (unfinished / done).write_text('{"fid": 126.7}')
    (tmp_path / 'bin').rename(tmp_path / 'bin_first')
    result, calls = run_search(tmp_path, script, names, **env)  # every variant finished: only the summary
    assert result.returncode == 0, result.stderr
    assert not any('train_' in call or 'fid.py' in call for call in calls[calls_before:])


@pytest.mark.parametrize('runs_per_gpu, most_at_once', [('1', 2), ('2', 4), ('', 5)])
def test_run_variants_runs_at_most_runs_per_gpu_on_each_gpu(tmp_path, runs_per_gpu, most_at_once):
    # each run holds a lock file while it sleeps; the most lock files seen at once is the concurrency
    script = f"""
set -euo pipefail
GPUS=2 RUNS_PER_GPU={runs_per_gpu}
source scripts/run_variants.sh
run() {{
  touch "{tmp_path}/running.$1"; ls "{tmp_path}" | grep -c '^running' >> "{tmp_path}/seen.$CUDA_VISIBLE_DEVICES"
  sleep 0.5; rm "{tmp_path}/running.$1"; [ "$1" != c ]
}}
run_variants 'variant ' "{tmp_path}/out/" run a b c d e
echo "failed=$failed"
"""
    result = subprocess.run(['bash', '-c', script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert 'failed=1' in result.stdout and 'variant c failed' in result.stderr
    seen = [int(n) for gpu in (0, 1) for n in (tmp_path / f'seen.{gpu}').read_text().split()]
    assert len(seen) == 5 and max(seen) == most_at_once
    assert all((tmp_path / 'out' / name / 'run.log').exists() for name in 'abcde')


def host_with_gpus(bin_dir, gpus):
    """The environment of a shell on a host with `gpus` GPUs, none chosen: a `nvidia-smi` in bin_dir whose -L lists
    them first on PATH, and neither GPUS nor CUDA_VISIBLE_DEVICES set."""
    bin_dir.mkdir(exist_ok=True)
    lines = ''.join(f'echo "GPU {i}: NVIDIA H200 (UUID: GPU-{i})"\n' for i in range(gpus))
    (bin_dir / 'nvidia-smi').write_text(f'#!/bin/sh\n{lines}')
    (bin_dir / 'nvidia-smi').chmod(0o755)
    env = {name: setting for name, setting in os.environ.items() if name not in ('GPUS', 'CUDA_VISIBLE_DEVICES')}
    return {**env, 'PATH': f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


@pytest.mark.parametrize('visible, expected', [(None, ['0', '1', '2']), ('3,5', ['3', '5', '3'])])
def test_run_variants_spreads_variants_over_the_visible_gpus_only(tmp_path, visible, expected):
    # a host of 8 GPUs; a script given two of them (CUDA_VISIBLE_DEVICES) must not put a variant on the others
    script = f"""
set -euo pipefail
source scripts/run_variants.sh
run() {{ echo "$CUDA_VISIBLE_DEVICES" > "$2/gpu"; }}
run_variants 'variant ' "{tmp_path}/out/" run a b c
"""
    env = host_with_gpus(tmp_path / 'bin', 8)
    if visible:
        env['CUDA_VISIBLE_DEVICES'] = visible
    result = subprocess.run(['bash', '-c', script], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert [(tmp_path / 'out' / name / 'gpu').read_text().strip() for name in 'abc'] == expected


@pytest.mark.parametrize('gpus, expected', [(2, ('0', '1')), (1, ('0', '0'))])
def test_device_run_puts_each_chain_on_its_own_gpu(tmp_path, gpus, expected):
    # results/table4/run.sh `cifar10 ... // tok_search v`: the second chain, and the variant its search spreads over
    # the GPUs, go to the second GPU of two, and share the only one otherwise
    stage = tmp_path / 'stage'
    (stage / 'repo' / 'scripts').mkdir(parents=True)
    shutil.copy(os.path.join(REPO, 'scripts', 'run_variants.sh'), stage / 'repo' / 'scripts')
    (stage / 'repo' / 'scripts' / 'cifar10.sh').write_text('echo "$CUDA_VISIBLE_DEVICES" > "$OUT.gpu"\n')
    (stage / 'repo' / 'scripts' / 'tok_search.sh').write_text(
        'source "$(dirname "$0")/run_variants.sh"\n'
        'record() { echo "$CUDA_VISIBLE_DEVICES" > "$2/gpu"; }\n'
        'run_variants "variant " "$ROOT/" record "$@"\n')
    env = {**host_with_gpus(tmp_path / 'bin', gpus), 'STAGE': str(stage)}
    result = subprocess.run(['bash', os.path.join('results', 'table4', 'run.sh'), 'cifar10', f'OUT={stage}/t4/a', '//',
                             'tok_search', 'v'], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert 'cifar10 exit 0' in result.stdout and 'tok_search exit 0' in result.stdout, result.stdout
    assert (stage / 'DONE').exists()
    chains = (stage / 't4' / 'a.gpu', stage / 't4' / 'tok_search' / 'v' / 'gpu')
    assert tuple(path.read_text().strip() for path in chains) == expected


def test_table4_summary_judges_titok_minus_full_against_the_seed_spread(tmp_path):
    figures = {'titok': (15.0, 23.0), 'full': (29.0, 36.0), 'full_s1': (21.0, 27.0)}  # rFID-train, gFID
    for row, (rfid_train, gfid) in figures.items():
        for folder in ('tok_train', 'samples'):
            (tmp_path / 'root' / row / folder).mkdir(parents=True)
        (tmp_path / 'root' / row / 'tok_train' / 'rfid.json').write_text(json.dumps({'fid': rfid_train}))
        (tmp_path / 'root' / row / 'samples' / 'fid.json').write_text(json.dumps({'fid': gfid}))
    env = {**os.environ, 'PATH': f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}",
           'ROOT': str(tmp_path / 'root'), 'SUMMARY_ONLY': '1'}
    result = subprocess.run(['bash', os.path.join('scripts', 'table4.sh'), 'titok', 'full', 'titok_s1', 'full_s1'],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    noise = json.loads((tmp_path / 'root' / 'noise.json').read_text())
    assert noise['seed_spread'] == {'titok': {}, 'full': {'rfid_train': 8.0, 'gfid': 9.0, 'gfid_minus_rfid_train': 1.0}}
    assert noise['titok_minus_full'] == {'rfid_train': -10.0, 'gfid': -8.5, 'gfid_minus_rfid_train': 1.5}
    assert 'full, |seed 0 - seed 1|: rFID-train 8.00, gFID 9.00, g-r 1.00' in result.stdout


def test_table4_summary_only_tabulates_a_partial_row_without_training(tmp_path):
    # a row whose machine was lost after its sweep: tokenizer figures and sweep, no gFID
    row = tmp_path / 'root' / 'titok'
    for folder in ('tok', 'tok_train', 'sweep'):
        (row / folder).mkdir(parents=True)
    (row / 'tok' / 'rfid.json').write_text('{"fid": 19.26}')
    prefixes = [dict(prefix=i, psnr_vs_image=p, code_perplexity=c) for i, p, c in ((1, 14.0, 900.5), (2, 15.0, 1.2))]
    (row / 'tok' / 'eval.jsonl').write_text(json.dumps(dict(
        psnr_vs_image_at_N=15.0, psnr_vs_lowpass_at={'1': 23.0}, codebook_used=0.99, prefixes=prefixes)) + '\n')
    (row / 'tok_train' / 'rfid.json').write_text('{"fid": 15.36, "precision": 0.7, "recall": 0.5}')
    (row / 'sweep' / 'sweep.json').write_text('{"rows": [{"cfg": 1.5, "fid": 32.3}, {"cfg": 2.0, "fid": 35.04}], "n": 3000}')
    (row / 'stage_seconds.jsonl').write_text('{"stage": "tok", "seconds": 300}\n{"stage": "rfid_train", "seconds": 60}\n')
    env = {**os.environ, 'PATH': f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}",
           'ROOT': str(tmp_path / 'root'), 'SUMMARY_ONLY': '1', 'DATA': str(tmp_path / 'missing')}
    result = subprocess.run(['bash', os.path.join('scripts', 'table4.sh'), 'titok'], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / 'root' / 'summary.json').read_text())[0]
    assert summary['rfid_test'] == 19.26 and summary['rfid_train'] == 15.36 and summary['gfid'] is None
    assert (summary['rfid_train_precision'], summary['rfid_train_recall']) == (0.7, 0.5)
    assert summary['sweep_fid_by_cfg'] == {'1.5': 32.3, '2.0': 35.04} and summary['sweep_samples'] == 3000
    assert summary['psnr_at_N'] == 15.0 and summary['code_perplexity_per_position'] == [900.5, 1.2]
    assert '32.30' in result.stdout
    assert summary['stage_seconds'] == {'tok': 300, 'rfid_train': 60} and 'titok: 6.0 minutes (tok 5.0, rfid_train 1.0)' in result.stdout
    assert not (row / 'run.log').exists() and not (tmp_path / 'root' / 'cifar10_train_stats.npz').exists()

    missing = subprocess.run(['bash', os.path.join('scripts', 'table4.sh'), 'titok'], cwd=REPO, capture_output=True,
                             text=True, timeout=60, env={**env, 'ROOT': str(tmp_path / 'elsewhere')})
    assert missing.returncode == 2 and 'SUMMARY_ONLY: no folder' in missing.stderr
