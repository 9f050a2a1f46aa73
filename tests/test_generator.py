import dataclasses
import math
import os

import numpy as np
import pytest
import torch

import common
from conftest import REPO
from generator import GPT, PAPER_PARAMS, GPTConfig, drop_labels, sample_from_logits, sample_with_race


def make_model(seed=0, **overrides):
    """Tiny model with weights spread out like a trained one: at VAR's init the AdaLN gates are
    ~1e-5, so every block is nearly the identity and the tests below could not see a leak."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig.preset('tiny', **overrides))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.endswith('log_scale'):
                p.normal_(0.0, 0.3)
    return model.eval()


def random_tokens(model, batch, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(model.config.vocab_size, (batch, model.config.n_tokens), generator=g)


def test_forward_shapes_and_config_round_trip():
    model = make_model()
    idx, labels = random_tokens(model, 3), torch.tensor([0, 5, model.config.num_classes])
    assert model(idx, labels).shape == (3, model.config.n_tokens, model.config.vocab_size)
    assert model(idx[:, :3], labels).shape == (3, 3, model.config.vocab_size)
    rebuilt = GPT(GPTConfig(**dataclasses.asdict(model.config)))
    rebuilt.load_state_dict(model.state_dict())
    assert torch.equal(rebuilt.eval()(idx, labels), model(idx, labels))


def test_forward_with_loss_is_the_cross_entropy_of_each_position():
    model = make_model()
    idx, labels = random_tokens(model, 3), torch.tensor([1, 5, 10])
    logits, token_loss = model(idx, labels, with_loss=True)
    assert torch.equal(logits, model(idx, labels)) and token_loss.shape == idx.shape
    expected = -logits.log_softmax(-1).gather(-1, idx[..., None])[..., 0]
    torch.testing.assert_close(token_loss, expected)


def test_kv_cache_generation_matches_full_forward():
    model = make_model()
    labels = torch.tensor([0, 3, 7, 9])
    tokens, step_logits = model.generate(labels, top_k=1, return_logits=True)
    full_logits = model(tokens, labels)
    torch.testing.assert_close(step_logits, full_logits, rtol=1e-5, atol=1e-5)
    assert torch.equal(tokens, full_logits.argmax(dim=-1))


def test_causality():
    model = make_model()
    idx, labels = random_tokens(model, 2), torch.tensor([1, 2])
    base = model(idx, labels)
    for j in range(model.config.n_tokens):
        changed = idx.clone()
        changed[:, j] = (changed[:, j] + 1) % model.config.vocab_size
        logits = model(changed, labels)
        # logits[:, i] sees idx[:, :i], so changing token j affects positions > j only
        assert torch.equal(logits[:, :j + 1], base[:, :j + 1])
        if j + 1 < model.config.n_tokens:
            assert not torch.allclose(logits[:, j + 1:], base[:, j + 1:])


def test_class_label_conditions_every_position():
    model = make_model()
    idx = random_tokens(model, 1)
    cond, null = model(idx, torch.tensor([4])), model(idx, torch.tensor([model.config.num_classes]))
    assert not torch.isclose(cond, null).all(dim=-1).any()


def test_cfg_scale_zero_is_conditional():
    model = make_model()
    labels = torch.tensor([2, 6])
    # a zero schedule tensor forces the doubled-batch guided path
    tokens, step_logits = model.generate(labels, cfg_scale=torch.zeros(model.config.n_tokens), top_k=1, return_logits=True)
    torch.testing.assert_close(step_logits, model(tokens, labels), rtol=1e-5, atol=1e-5)


def test_cfg_ramp_scales_each_position():
    model = make_model()
    labels, N, scale = torch.tensor([2, 6]), model.config.n_tokens, 3.0
    expected_ramp = scale * torch.arange(N) / (N - 1)
    torch.testing.assert_close(model.cfg_schedule(scale, cfg_ramp=True), expected_ramp)
    g = torch.Generator().manual_seed(0)
    tokens, step_logits = model.generate(labels, cfg_scale=scale, cfg_ramp=True, generator=g, return_logits=True)
    cond = model(tokens, labels)
    uncond = model(tokens, torch.full_like(labels, model.config.num_classes))
    s = expected_ramp[None, :, None]
    torch.testing.assert_close(step_logits, (1 + s) * cond - s * uncond, rtol=1e-5, atol=1e-4)


def test_seeded_sampling_is_reproducible():
    model = make_model()
    labels = torch.tensor([0, 1, 2, 3])

    def sample(seed):
        return model.generate(labels, cfg_scale=1.5, top_p=0.95, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(sample(0), sample(0))
    assert not torch.equal(sample(0), sample(1))


def test_top_k_and_top_p_restrict_support():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4096, 50, generator=g)
    assert torch.equal(sample_from_logits(logits, top_k=1, generator=g), logits.argmax(dim=-1))
    top5 = logits.topk(5, dim=-1).indices
    assert (sample_from_logits(logits, top_k=5, generator=g)[:, None] == top5).any(dim=-1).all()
    # probabilities 0.5, 0.3, 0.15, 0.05: the smallest head with mass >= 0.7 is {0, 1}
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log().expand(4096, 4)
    samples = sample_from_logits(logits, top_p=0.7, generator=g)
    assert set(samples.tolist()) == {0, 1}
    assert set(sample_from_logits(logits, generator=g).tolist()) == {0, 1, 2, 3}


def test_prefix_continuation_and_truncation():
    model = make_model()
    labels = torch.tensor([1, 8, 3])
    full = model.generate(labels, top_k=1)
    for n_prefix in (1, 3, model.config.n_tokens - 1):
        continued = model.generate(labels, top_k=1, prefix=full[:, :n_prefix])
        assert torch.equal(continued, full)
    assert torch.equal(model.generate(labels, top_k=1, n_steps=3), full[:, :3])
    assert torch.equal(model.generate(labels, top_k=1, prefix=full[:, :2], n_steps=2), full[:, :4])


def test_next_token_model_reproduces_the_recorded_logits_and_samples():
    """tokens_per_step = 1 is the plain next-token model: its logits, seeded samples, guided logits and prefix
    continuations equal those recorded from a next-token-only implementation (assets/generator_next_token_reference.npz,
    this file's make_model() on the CPU in float32); tests/test_fast_sample.py checks the fast path's samples."""
    ref = np.load(os.path.join(REPO, 'assets', 'generator_next_token_reference.npz'))
    model = make_model()
    assert model.config.tokens_per_step == 1
    idx, labels = torch.from_numpy(ref['idx']), torch.from_numpy(ref['labels'])
    torch.testing.assert_close(model(idx, labels), torch.from_numpy(ref['logits']), rtol=1e-5, atol=1e-5)
    tokens, step_logits = model.generate(labels, cfg_scale=2.0, cfg_ramp=True, top_p=0.9, return_logits=True,
                                         generator=torch.Generator().manual_seed(7))
    assert torch.equal(tokens, torch.from_numpy(ref['tokens']))
    torch.testing.assert_close(step_logits, torch.from_numpy(ref['step_logits']), rtol=1e-5, atol=1e-4)
    continued = model.generate(labels, cfg_scale=1.5, prefix=idx[:, :3], generator=torch.Generator().manual_seed(8))
    assert torch.equal(continued, torch.from_numpy(ref['continued']))


def test_checkpoint_config_without_tokens_per_step_loads_as_next_token_model():
    model = make_model()
    old_config = {k: v for k, v in dataclasses.asdict(model.config).items() if k != 'tokens_per_step'}
    rebuilt = GPT(GPTConfig(**old_config))
    rebuilt.load_state_dict(model.state_dict())  # strict: no new weights or persistent buffers
    assert rebuilt.config.tokens_per_step == 1
    grouped = GPT(GPTConfig.preset('tiny', tokens_per_step=4))
    assert grouped.state_dict().keys() == model.state_dict().keys()


def test_tokens_per_step_must_divide_the_sequence():
    with pytest.raises(ValueError, match=r'must divide n_tokens=8: use one of \[1, 2, 4, 8\]'):
        GPT(GPTConfig.preset('tiny', tokens_per_step=3))


def test_group_logits_see_only_earlier_groups():
    """P = 4 over N = 16: a token's logits do not depend on the tokens of its own group or of later groups, and
    do depend on every token of every earlier group (a causal mask would hide the later tokens of a group)."""
    model = make_model(n_tokens=16, tokens_per_step=4)
    P, N = 4, 16
    idx, labels = random_tokens(model, 2), torch.tensor([1, 2])
    base = model(idx, labels)
    for j in range(N):
        changed = idx.clone()
        changed[:, j] = (changed[:, j] + 1) % model.config.vocab_size
        logits = model(changed, labels)
        end_of_group = (j // P + 1) * P
        assert torch.equal(logits[:, :end_of_group], base[:, :end_of_group])
        for later in range(end_of_group, N):  # every slot of a later group sees all of every earlier group
            assert not torch.allclose(logits[:, later], base[:, later])


@pytest.mark.parametrize('cfg_scale', [0.0, 1.5])
def test_group_sampler_equals_full_forward_group_by_group(cfg_scale):
    """P tokens per cached step: each group's logits are those of a teacher-forced pass over the finished
    sequence, so greedy tokens are its argmax."""
    model = make_model(n_tokens=16, tokens_per_step=4)
    labels = torch.tensor([0, 3, 7, 9])
    tokens, step_logits = model.generate(labels, cfg_scale=cfg_scale, top_k=1, return_logits=True)
    s = model.cfg_schedule(cfg_scale)
    full = model(tokens, labels)
    if s is not None:
        s = s[None, :, None]
        full = (1 + s) * full - s * model(tokens, torch.full_like(labels, model.config.num_classes))
    torch.testing.assert_close(step_logits, full, rtol=1e-5, atol=1e-4)
    assert torch.equal(tokens, full.argmax(dim=-1))


def test_group_sampler_prefix_and_truncation_at_any_token():
    """A prefix that ends inside a group forces that group's first tokens; n_steps may end inside a group."""
    model = make_model(n_tokens=16, tokens_per_step=4)
    labels = torch.tensor([1, 8, 3])
    full, full_logits = model.generate(labels, cfg_scale=1.5, top_k=1, return_logits=True)
    for n_prefix in (1, 4, 6, 15):
        continued, logits = model.generate(labels, cfg_scale=1.5, top_k=1, prefix=full[:, :n_prefix], return_logits=True)
        assert torch.equal(continued, full)
        torch.testing.assert_close(logits, full_logits[:, n_prefix:], rtol=1e-5, atol=1e-4)
    for n_steps in (3, 4, 9):
        assert torch.equal(model.generate(labels, cfg_scale=1.5, top_k=1, n_steps=n_steps), full[:, :n_steps])
    assert torch.equal(model.generate(labels, cfg_scale=1.5, top_k=1, prefix=full[:, :6], n_steps=5), full[:, :11])
    assert torch.equal(model.generate(labels, prefix=full[:, :6], n_steps=0), full[:, :6])


def test_drop_path_only_in_training():
    model = make_model(drop_path=0.5)
    idx, labels = random_tokens(model, 8), torch.arange(8)
    assert torch.equal(model(idx, labels), model(idx, labels))
    model.train()
    assert not torch.equal(model(idx, labels), model(idx, labels))


def test_weight_decay_spares_biases_scales_and_positions():
    # the optimizer train_gen.py builds: its first group decays, its second does not
    model = make_model()
    optimizer = common.adamw(model, 1e-4, (0.9, 0.95), 0.05, model.no_weight_decay())
    names = {id(p): name for name, p in model.named_parameters()}
    decay, no_decay = ({names[id(p)] for p in group['params']} for group in optimizer.param_groups)
    assert [group['weight_decay'] for group in optimizer.param_groups] == [0.05, 0.0]
    assert not decay & no_decay and decay | no_decay == set(names.values())
    log_scales = {name for name in names.values() if name.endswith('log_scale')}
    assert len(log_scales) == model.config.depth
    assert {'pos_emb', 'head.bias', 'blocks.0.attn.q_bias'} | log_scales <= no_decay
    assert {'head.weight', 'tok_emb.weight', 'class_emb.weight', 'blocks.0.attn.qkv.weight'} <= decay


def test_drop_labels():
    labels = torch.zeros(10000, dtype=torch.long)
    dropped = drop_labels(labels, num_classes=10, prob=0.1, generator=torch.Generator().manual_seed(0))
    assert set(dropped.unique().tolist()) == {0, 10}
    assert abs((dropped == 10).float().mean().item() - 0.1) < 0.02


@pytest.mark.parametrize('name', sorted(PAPER_PARAMS))
def test_param_count_matches_paper(name):
    with torch.device('meta'):  # no memory is allocated for the 0.3B-1B weights
        model = GPT(GPTConfig.preset(name))
    assert model.config.width == 64 * model.config.depth and model.config.heads == model.config.depth
    assert math.isclose(model.num_params(), PAPER_PARAMS[name], rel_tol=0.05)


def test_sample_with_race_is_sample_from_logits():
    logits = torch.randn(64, 50)
    race = torch.empty(64, 50).exponential_(generator=torch.Generator().manual_seed(5))
    for kw in (dict(), dict(top_k=3), dict(top_p=0.8, temperature=0.5)):
        assert torch.equal(sample_with_race(logits, race, **kw),
                           sample_from_logits(logits, generator=torch.Generator().manual_seed(5), **kw))


def test_training_flops_count_every_matmul_once_per_token():
    config = GPTConfig.preset('tiny')
    C, L, N, K = config.width, config.depth, config.n_tokens, config.vocab_size
    per_token = L * (3 * C * C + C * C + 2 * 4 * C * C) + C * K  # qkv, proj, MLP, head
    per_sequence = L * (C * 6 * C + 6 * C) + C * 2 * C + 2 * C  # block and head AdaLN, once per class
    attention = 2 * 2 * L * N * N * C  # QK^T and AV
    assert GPT(config).train_flops_per_sample() == 6 * (per_token * N + per_sequence) + 3 * attention


@pytest.mark.parametrize('tokens_per_step', [1, 4])
def test_training_forward_with_loss_compiles_to_one_graph(tokens_per_step):
    model = make_model(drop_path=0.1, tokens_per_step=tokens_per_step).train()
    idx = random_tokens(model, 4)
    explanation = torch._dynamo.explain(model)(idx, torch.tensor([0, 1, 2, 10]), with_loss=True)
    assert explanation.graph_break_count == 0, [b.reason for b in explanation.break_reasons]
