import os

import pytest
import torch

import sample
from conftest import run, save_modified_tokenizer
from tokenizer import Tokenizer

EXPORT = os.path.join('scripts', 'export_weights.py')


def load(path):
    return torch.load(path, map_location='cpu', weights_only=True)


def export(source, out, expect_ok=True):
    return run(EXPORT, source, out, expect_ok=expect_ok, in_process=True)


@pytest.fixture(scope='module')
def tokenizer_with_distinct_ema(tiny_tokenizer, tmp_path_factory):
    """The tiny tokenizer's checkpoint with its training weights moved off its EMA weights, so that an export of the
    wrong ones shows."""
    def move_training_weights(ckpt):
        ckpt['model'] = {name: value + 1 if value.is_floating_point() else value for name, value in ckpt['model'].items()}
    return save_modified_tokenizer(tiny_tokenizer[1], tmp_path_factory.mktemp('tok') / 'ckpt.pt', move_training_weights)


def test_exported_tokenizer_holds_the_ema_weights_and_no_training_state(tokenizer_with_distinct_ema, tmp_path):
    out = tmp_path / 'weights.pt'
    export(tokenizer_with_distinct_ema, out)
    source, weights = load(tokenizer_with_distinct_ema), load(out)
    assert not {'optimizer', 'disc', 'disc_optimizer', 'lecam', 'rng'} & weights.keys()
    assert (weights['config'], weights['step'], weights['ema']) == (source['config'], source['step'], None)
    loaded = Tokenizer.from_checkpoint(str(out)).state_dict()
    assert all(torch.equal(loaded[name], source['ema'][name].float()) for name in loaded)
    assert os.path.getsize(out) < os.path.getsize(tokenizer_with_distinct_ema) / 2


def test_generator_samples_with_its_tokenizers_export_but_not_with_another_tokenizers(tiny_tokenizer, generator_ckpt,
                                                                                      tokenizer_with_distinct_ema, tmp_path):
    ours, other = tmp_path / 'ours.pt', tmp_path / 'other.pt'
    export(tiny_tokenizer[1], ours)
    export(tokenizer_with_distinct_ema, other)  # same EMA weights, exported from another file
    gpt, tok, _ = sample.load_models(str(generator_ckpt), str(ours))
    assert tok.path == str(ours)
    with pytest.raises(Exception, match='not the checkpoint the generator was trained on'):
        sample.load_models(str(generator_ckpt), str(other))


def test_exported_generator_samples_with_its_ema_weights(generator_ckpt, tmp_path):
    out = tmp_path / 'gen.pt'
    export(generator_ckpt, out)
    source = load(generator_ckpt)
    gpt, _, ckpt = sample.load_models(str(out))
    assert ckpt['tokenizer'] == source['tokenizer'] and 'optimizer' not in ckpt
    state = gpt.state_dict()
    assert all(torch.equal(state[name], source['ema'][name]) for name in state)
    assert any(not torch.equal(source['ema'][name], source['model'][name]) for name in state)


def test_resuming_an_export_stops_and_names_the_checkpoint_it_came_from(tiny_tokenizer, tmp_path):
    data, tok_ckpt = tiny_tokenizer
    out = tmp_path / 'weights.pt'
    export(tok_ckpt, out)
    result = run('train_tok.py', '--data', data, '--resume', out, '--out_dir', tmp_path / 'tok', expect_ok=False,
                 in_process=True)
    assert result.returncode == 2 and 'holds weights only' in result.stderr and str(tok_ckpt) in result.stderr


def test_export_refuses_its_own_output_an_export_and_a_foreign_file(tiny_tokenizer, tmp_path):
    tok_ckpt = tiny_tokenizer[1]
    out = tmp_path / 'weights.pt'
    assert 'another path' in export(tok_ckpt, tok_ckpt, expect_ok=False).stderr
    export(tok_ckpt, out)
    assert 'already holds weights only' in export(out, tmp_path / 'again.pt', expect_ok=False).stderr
    foreign = tmp_path / 'foreign.pt'
    torch.save({'weights': torch.zeros(2)}, foreign)
    assert 'expected a tokenizer or generator checkpoint' in export(foreign, tmp_path / 'x.pt', expect_ok=False).stderr
    assert os.path.getsize(tok_ckpt) > 0 and not (tmp_path / 'x.pt').exists()
