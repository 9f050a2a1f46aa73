"""fast_sample.py against the model it mirrors: the fast path's tokens and logits are GPT.generate's (float32 on the
CPU), and building a sampler for a model whose mirrored code was edited fails."""
import functools
import importlib.util
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fast_sample
from conftest import REPO
from fast_sample import FastSampler, decode_attention
from test_generator import make_model


# ----------------------------------------------------------------------------- the contract with generator.py

def load_edited_generator(tmp_path, edits):
    """generator.py with each (old, new) text replacement made, imported from tmp_path as a module of its own."""
    with open(os.path.join(REPO, 'generator.py')) as f:
        source = f.read()
    for old, new in edits:
        assert source.count(old) == 1, old
        source = source.replace(old, new)
    path = tmp_path / 'edited_generator.py'
    path.write_text(source)
    spec = importlib.util.spec_from_file_location('edited_generator', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def edited_model(module):
    """make_model()'s weights in the edited module's GPT."""
    model = module.GPT(module.GPTConfig.preset('tiny'))
    model.load_state_dict(make_model().state_dict())
    return model.eval()


@pytest.mark.parametrize('edit', [
    ("nn.GELU(approximate='tanh')", 'nn.GELU()'),  # the exact GELU: same parameters, other math
    ('x = x + drop_path(h * gate1,', 'x = x + drop_path(h * (1 + gate1),'),  # another residual gate
])
def test_sampler_refuses_a_model_whose_block_was_edited(tmp_path, edit):
    labels = torch.tensor([0, 3, 7])
    model = edited_model(load_edited_generator(tmp_path, [edit]))
    # the edit changes the model's logits, so a sampler running the old math would sample from the wrong ones
    idx = torch.randint(model.config.vocab_size, (3, model.config.n_tokens), generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(model(idx, labels), make_model()(idx, labels), rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match=r'Port the change into fast_sample\.py.*set MIRRORED_FINGERPRINT'):
        FastSampler(model, batch_size=3, guided=True, top_k=1)
    with pytest.raises(RuntimeError, match='sample with GPT.generate'):
        fast_sample.generate(model, labels, cfg_scale=1.5, top_k=1)


def test_sampler_refuses_block_subclasses_swapped_into_the_model():
    class ScaledBlock(type(make_model().blocks[0])):
        def forward(self, x, *args, **kwargs):
            return 0.5 * super().forward(x, *args, **kwargs)

    model = make_model()
    for i, original in enumerate(model.blocks):
        model.blocks[i] = ScaledBlock(model.config, original.drop_path_rate)
        model.blocks[i].load_state_dict(original.state_dict())
        match = 'every block of the model to be of one class' if i < len(model.blocks) - 1 else 'MIRRORED_FINGERPRINT'
        with pytest.raises(RuntimeError, match=match):
            FastSampler(model, batch_size=2, guided=False)


def test_sampler_accepts_edits_of_comments_docstrings_and_layout(tmp_path):
    """The fingerprint ignores what does not change the math: the edited model samples through the fast path,
    with the reference loop's tokens."""
    edits = [
        ('    def forward(self, x, modulation, kv_cache=None, positions=None, visible=None):\n',
         '    def forward(self, x, modulation, kv_cache=None, positions=None, visible=None):\n'
         '        """One block: attention, then the MLP, each AdaLN-modulated and gated."""\n\n'
         '        # a comment on its own line\n'),
        ('"""Causal over x (or restricted', '"""Attention, causal over x (or restricted'),
        ('hidden = round(config.width * config.mlp_ratio)', 'hidden = round(\n            config.width * config.mlp_ratio)  # MLP width'),
    ]
    model = edited_model(load_edited_generator(tmp_path, edits))
    assert fast_sample.mirrored_fingerprint(model) == fast_sample.MIRRORED_FINGERPRINT
    labels = torch.tensor([0, 3, 7])
    assert torch.equal(fast_sample.generate(model, labels, cfg_scale=1.5, top_k=1),
                       model.generate(labels, cfg_scale=1.5, top_k=1))


def test_next_token_fast_path_reproduces_the_recorded_samples():
    """The samples and guided logits recorded from the next-token model before groups existed
    (tests/test_generator.py has the reference loop's half), on the fast path."""
    ref = np.load(os.path.join(REPO, 'assets', 'generator_next_token_reference.npz'))
    model = make_model()
    labels = torch.from_numpy(ref['labels'])
    tokens, step_logits = fast_sample.generate(model, labels, cfg_scale=2.0, cfg_ramp=True, top_p=0.9,
                                               return_logits=True, generator=torch.Generator().manual_seed(7))
    assert torch.equal(tokens, torch.from_numpy(ref['tokens']))
    torch.testing.assert_close(step_logits, torch.from_numpy(ref['step_logits']), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize('cfg_scale', [0.0, 1.5])
def test_group_fast_sampler_samples_as_the_reference_loop(cfg_scale):
    """P tokens per step (group_attention): the same greedy tokens and logits, and the same samples from the same
    draws."""
    model = make_model(n_tokens=16, tokens_per_step=4)
    labels = torch.tensor([0, 3, 7, 9])
    tokens, step_logits = model.generate(labels, cfg_scale=cfg_scale, top_k=1, return_logits=True)
    fast_tokens, fast_logits = fast_sample.generate(model, labels, cfg_scale=cfg_scale, top_k=1, return_logits=True)
    assert torch.equal(fast_tokens, tokens)
    torch.testing.assert_close(fast_logits, step_logits, rtol=1e-5, atol=1e-4)
    for seed in range(3):
        sample = [generate(labels, cfg_scale=2.0, cfg_ramp=True, top_p=0.9, generator=torch.Generator().manual_seed(seed))
                  for generate in (model.generate, functools.partial(fast_sample.generate, model))]
        assert torch.equal(*sample)


def test_group_fast_sampler_truncation_at_any_token():
    """n_steps may end inside a group."""
    model = make_model(n_tokens=16, tokens_per_step=4)
    labels = torch.tensor([1, 8, 3])
    full = model.generate(labels, cfg_scale=1.5, top_k=1)
    for n_steps in (3, 4, 9):
        assert torch.equal(fast_sample.generate(model, labels, cfg_scale=1.5, top_k=1, n_steps=n_steps), full[:, :n_steps])


# ----------------------------------------------------------------------------- on the CPU: the same step
# functions as on a GPU, run eagerly instead of replayed from CUDA graphs

@pytest.mark.parametrize('cfg_scale', [0.0, 1.5])
def test_fast_greedy_equals_reference(cfg_scale):
    model = make_model()
    labels = torch.tensor([0, 3, 7, 9, 2])
    ref_tokens, ref_logits = model.generate(labels, cfg_scale=cfg_scale, top_k=1, return_logits=True)
    tokens, logits = fast_sample.generate(model, labels, cfg_scale=cfg_scale, top_k=1, return_logits=True)
    assert torch.equal(tokens, ref_tokens)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize('sampling', [dict(), dict(top_k=5), dict(top_p=0.9), dict(temperature=0.7, top_k=10, top_p=0.95)])
def test_fast_sampling_uses_the_reference_random_stream(sampling):
    model = make_model()
    labels = torch.tensor([0, 1, 2, 3, 4, 5])

    def sample(seed, fast):
        generate = functools.partial(fast_sample.generate, model) if fast else model.generate
        return generate(labels, cfg_scale=2.0, cfg_ramp=True, generator=torch.Generator().manual_seed(seed), **sampling)

    assert torch.equal(sample(0, fast=True), sample(0, fast=True))  # same seed, same samples
    assert not torch.equal(sample(0, fast=True), sample(1, fast=True))
    for seed in range(3):  # the very same draws as the reference loop, so the very same samples in float32
        assert torch.equal(sample(seed, fast=True), sample(seed, fast=False))


def test_fast_guidance_schedule_and_truncation():
    model = make_model()
    labels, N = torch.tensor([2, 6, 1]), model.config.n_tokens
    schedule = torch.linspace(0.5, 3.0, N)
    ref, ref_logits = model.generate(labels, cfg_scale=schedule, top_k=1, return_logits=True)
    tokens, logits = fast_sample.generate(model, labels, cfg_scale=schedule, top_k=1, return_logits=True)
    assert torch.equal(tokens, ref)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-4)
    short, short_logits = fast_sample.generate(model, labels, cfg_scale=schedule, top_k=1, return_logits=True, n_steps=3)
    assert torch.equal(short, ref[:, :3]) and torch.equal(short_logits, logits[:, :3])


def test_fast_sampler_follows_weight_updates_and_is_reused():
    model = make_model()
    labels = torch.tensor([4, 5])
    before = fast_sample.generate(model, labels, top_k=1)
    sampler = fast_sample.SAMPLERS[model]
    with torch.no_grad():
        model.head.bias[:] = torch.randn(model.config.vocab_size) * 10  # in place: same pointer, new version
    after = fast_sample.generate(model, labels, top_k=1)
    assert fast_sample.SAMPLERS[model] is sampler  # same settings: the cached sampler is reused
    assert torch.equal(after, model.generate(labels, top_k=1))
    assert not torch.equal(after, before)
    fast_sample.generate(model, labels, top_k=2)
    assert fast_sample.SAMPLERS[model] is not sampler  # other settings: a new one replaces it
    plain = fast_sample.SAMPLERS[model]
    compiled = fast_sample.cached_sampler(model, 2, 0.0, 1.0, 2, 0.0, False, compile=True)  # built only: compiles on first call
    assert compiled is not plain and compiled._attn_in is not plain._attn_in


def test_fast_sampler_direct_use_and_argument_checks():
    model = make_model()
    labels = torch.tensor([1, 8, 3])
    sampler = FastSampler(model, batch_size=3, guided=True, top_k=1)
    assert torch.equal(sampler(labels, cfg_scale=1.5), model.generate(labels, cfg_scale=1.5, top_k=1))
    with pytest.raises(ValueError, match='batches of 3'):
        sampler(labels[:2], cfg_scale=1.5)
    with pytest.raises(ValueError, match='guided=True'):
        sampler(labels, cfg_scale=0.0)
    with pytest.raises(ValueError, match='prefix'):
        fast_sample.generate(model, labels, prefix=labels[:, None])


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
@pytest.mark.parametrize('tokens_per_step', [1, 4])
def test_fast_sampler_on_cuda_samples_as_the_reference_loop(tokens_per_step):
    """The GPU path (CUDA graphs, the Triton attention or, for P > 1, group_attention, cuBLASLt's GELU epilogue;
    eager and compiled) in float32: the reference loop's greedy tokens and logits, and its samples under top-k /
    top-p for a seed."""
    model = make_model(tokens_per_step=tokens_per_step).cuda()
    labels = torch.tensor([0, 3, 7, 9, 2], device='cuda')
    ref_tokens, ref_logits = model.generate(labels, cfg_scale=1.5, top_k=1, return_logits=True)
    seed = lambda: torch.Generator('cuda').manual_seed(0)  # noqa: E731
    ref_sampled = model.generate(labels, cfg_scale=1.5, top_k=5, top_p=0.9, generator=seed())
    for compile in (False, True):
        sampler = FastSampler(model, 5, guided=True, top_k=1, return_logits=True, dtype=torch.float32, compile=compile)
        tokens, logits = sampler(labels, cfg_scale=1.5)
        assert torch.equal(tokens, ref_tokens)
        torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-4)
        sampler = FastSampler(model, 5, guided=True, top_k=5, top_p=0.9, dtype=torch.float32, compile=compile)
        assert torch.equal(sampler(labels, cfg_scale=1.5, generator=seed()), ref_sampled)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_addmm_gelu_epilogue_is_the_tanh_gelu():
    """_attn_out_mlp relies on it (the model's MLP uses GELU(tanh)); on the CPU the op uses the exact GELU."""
    g = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(*shape, generator=g).cuda() for shape in ((64, 32), (128, 32), (128,)))
    fused = torch._addmm_activation(b, x, w.t() / 4, use_gelu=True)
    torch.testing.assert_close(fused, F.gelu(F.linear(x, w / 4, b), approximate='tanh'), rtol=1e-5, atol=1e-5)
    assert (fused - F.gelu(F.linear(x, w / 4, b))).abs().max() > 1e-4  # the exact GELU differs by this much


def test_compiled_fast_samplers_many_batch_sizes_in_one_process_and_reference_draws(monkeypatch):
    """Every batch size is a static specialisation of the same compiled step functions (the first block's
    _attn_in and the later ones' are two); with fullgraph=True, dynamo's default limit of 8 per function would
    stop the 5th batch size with an error. backend='eager': dynamo's tracing and guards, no code generation."""
    compile_ = torch.compile
    monkeypatch.setattr(torch, 'compile', lambda f, **kw: compile_(f, backend='eager', **kw))
    torch._dynamo.reset()
    try:
        with torch._dynamo.config.patch(recompile_limit=8):  # the default
            model = make_model()
            for B in range(1, 7):
                labels = torch.arange(B)
                plain = FastSampler(model, B, guided=True, top_k=1)(labels, cfg_scale=1.5)
                compiled = FastSampler(model, B, guided=True, top_k=1, compile=True)(labels, cfg_scale=1.5)
                assert torch.equal(compiled, plain)
            # the traced guidance schedule and top-k / top-p / temperature draw what the reference loop draws
            sampling = dict(temperature=0.8, top_k=10, top_p=0.9)
            sampler = FastSampler(model, 6, guided=True, compile=True, **sampling)
            tokens = sampler(labels, cfg_scale=2.0, cfg_ramp=True, generator=torch.Generator().manual_seed(3))
            assert torch.equal(tokens, model.generate(labels, cfg_scale=2.0, cfg_ramp=True,
                                                      generator=torch.Generator().manual_seed(3), **sampling))
            assert torch._dynamo.config.recompile_limit == 8  # raised only while the samplers ran
    finally:
        torch._dynamo.reset()


def test_fast_path_under_bf16_autocast():
    """The precision of a GPU run: bf16 matmuls and KV cache, float32 residual stream, LayerNorm and logits."""
    model = make_model()
    labels = torch.tensor([0, 3, 7, 9])
    with torch.autocast('cpu', dtype=torch.bfloat16):
        tokens, logits = fast_sample.generate(model, labels, cfg_scale=1.5, generator=torch.Generator().manual_seed(0),
                                              return_logits=True)
        s = model.cfg_schedule(1.5)[None, :, None]
        ref = (1 + s) * model(tokens, labels) - s * model(tokens, torch.full_like(labels, model.config.num_classes))
    assert fast_sample.SAMPLERS[model].dtype == torch.bfloat16
    assert ((logits - ref).norm() / ref.norm()).item() < 3e-2


def decode_attention_case(device, dtype, R=6, H=4, N=16, D=16, seed=0):
    """q, k, v of one step laid out as the sampler passes them (views of an (R, 3, H, D) qkv projection,
    not yet normalised), per-head scales of q, and a cache filled with noise."""
    g = torch.Generator().manual_seed(seed)
    qkv = (3 * torch.randn(R, 3, H, D, generator=g)).to(device, dtype)
    q_scale = torch.linspace(1.0, 20.0, H).to(device)
    cache = torch.randn(2, R, H, N, D, generator=g).to(device, dtype)
    return qkv[:, 0], qkv[:, 1], qkv[:, 2], q_scale, cache


def reference_attention(q, k, v, q_scale, cache, t):
    """VAR's attention spelled out in float32: normalised q (times its scale) and keys, rounded to the cache's
    dtype as the sampler stores them, softmax over positions 0..t-1 of the cache and the new entry
    -> (output, normalised new key)."""
    q = (F.normalize(q.float(), dim=-1) * q_scale[:, None]).to(cache.dtype).float()
    k = F.normalize(k.float(), dim=-1).to(cache.dtype).float()
    keys = torch.cat([cache[0, :, :, :t].float(), k[:, :, None]], dim=2)
    values = torch.cat([cache[1, :, :, :t].float(), v[:, :, None].float()], dim=2)
    weights = torch.softmax(torch.einsum('rhd,rhnd->rhn', q, keys), dim=-1)
    return torch.einsum('rhn,rhnd->rhd', weights, values), k


@pytest.mark.parametrize('t', [0, 1, 7, 15])
def test_decode_attention_is_softmax_over_cache_and_new_entry(t):
    q, k, v, q_scale, cache = decode_attention_case('cpu', torch.float32)
    filled = cache.clone()
    out = decode_attention(q, k, v, filled[0], filled[1], t, q_scale)
    ref, k_normalised = reference_attention(q, k, v, q_scale, cache, t)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(filled[0, :, :, t], k_normalised)
    assert torch.equal(filled[1, :, :, t], v)
    untouched = [i for i in range(cache.shape[3]) if i != t]
    assert torch.equal(filled[:, :, :, untouched], cache[:, :, :, untouched])
    with pytest.raises(IndexError, match='outside the cache'):
        decode_attention(q, k, v, filled[0], filled[1], cache.shape[3], q_scale)


@pytest.mark.skipif(not torch.cuda.is_available() or fast_sample.triton is None, reason='needs CUDA and Triton')
@pytest.mark.parametrize('t', [0, 1, 33, 63])
def test_decode_attention_triton_kernel_matches_reference(t):
    q, k, v, q_scale, cache = decode_attention_case('cuda', torch.bfloat16, R=512, H=16, N=64, D=64)
    filled = cache.clone()
    out = fast_sample._decode_attention_triton(q, k, v, filled[0], filled[1], t, q_scale)
    ref, k_normalised = reference_attention(q, k, v, q_scale, cache, t)
    # bf16 output; and q is rounded to bf16 after normalising, where a last-bit difference in the float32 norm
    # can flip a rounding: at q_scale 20 that moves an output by up to ~1e-2
    torch.testing.assert_close(out.float(), ref, rtol=1e-2, atol=3e-2)
    torch.testing.assert_close(filled[0, :, :, t].float(), k_normalised, rtol=0, atol=4e-3)  # a bf16 ulp at most
    assert torch.equal(filled[1, :, :, t], v)
    untouched = [i for i in range(cache.shape[3]) if i != t]
    assert torch.equal(filled[:, :, :, untouched], cache[:, :, :, untouched])


def group_attention_case(device, dtype, P, R=6, H=4, N=16, D=16, seed=0):
    """decode_attention_case for P new slots per row: views of an (R, P, 3, H, D) qkv projection."""
    g = torch.Generator().manual_seed(seed)
    qkv = (3 * torch.randn(R, P, 3, H, D, generator=g)).to(device, dtype)
    q_scale = torch.linspace(1.0, 20.0, H).to(device)
    cache = torch.randn(2, R, H, N, D, generator=g).to(device, dtype)
    return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], q_scale, cache


def reference_group_attention(q, k, v, q_scale, cache, start):
    """reference_attention for P new slots: each attends to positions 0..start-1 and to all P new entries."""
    q = (F.normalize(q.float(), dim=-1) * q_scale[:, None]).to(cache.dtype).float()
    k = F.normalize(k.float(), dim=-1).to(cache.dtype).float()
    keys = torch.cat([cache[0, :, :, :start].float(), k.transpose(1, 2)], dim=2)
    values = torch.cat([cache[1, :, :, :start].float(), v.transpose(1, 2).float()], dim=2)
    weights = torch.softmax(torch.einsum('rphd,rhnd->rphn', q, keys), dim=-1)
    return torch.einsum('rphn,rhnd->rphd', weights, values), k


def check_group_attention_writes(filled, cache, k_normalised, v, start, atol):
    """The P new keys (normalised) and values at start..start+P-1 of the caches, every other position untouched."""
    P = v.shape[1]
    torch.testing.assert_close(filled[0, :, :, start:start + P].float(), k_normalised.transpose(1, 2), rtol=0, atol=atol)
    assert torch.equal(filled[1, :, :, start:start + P], v.transpose(1, 2))
    untouched = [i for i in range(cache.shape[3]) if not start <= i < start + P]
    assert torch.equal(filled[:, :, :, untouched], cache[:, :, :, untouched])


@pytest.mark.parametrize('P, start', [(2, 0), (4, 0), (4, 8), (4, 12)])
def test_group_attention_is_softmax_over_cache_and_every_new_slot(P, start):
    q, k, v, q_scale, cache = group_attention_case('cpu', torch.float32, P)
    filled = cache.clone()
    out = fast_sample.group_attention(q, k, v, filled[0], filled[1], start, q_scale)
    ref, k_normalised = reference_group_attention(q, k, v, q_scale, cache, start)
    torch.testing.assert_close(out, ref)
    check_group_attention_writes(filled, cache, k_normalised, v, start, atol=1e-6)
    with pytest.raises(IndexError, match='outside the cache'):
        fast_sample.group_attention(q, k, v, filled[0], filled[1], cache.shape[3] - P + 1, q_scale)


@pytest.mark.skipif(not torch.cuda.is_available() or fast_sample.triton is None, reason='needs CUDA and Triton')
@pytest.mark.parametrize('P, start', [(2, 0), (4, 0), (4, 32), (4, 60), (8, 56)])
def test_group_attention_triton_kernel_matches_reference(P, start):
    q, k, v, q_scale, cache = group_attention_case('cuda', torch.bfloat16, P, R=512, H=16, N=64, D=64)
    filled = cache.clone()
    out = fast_sample._group_attention_triton(q, k, v, filled[0], filled[1], start, q_scale)
    ref, k_normalised = reference_group_attention(q, k, v, q_scale, cache, start)
    torch.testing.assert_close(out.float(), ref, rtol=1e-2, atol=3e-2)  # as the one-slot kernel's test
    check_group_attention_writes(filled, cache, k_normalised, v, start, atol=4e-3)
