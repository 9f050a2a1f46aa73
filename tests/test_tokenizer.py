import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dct import lowpass
from tokenizer import TokConfig, Tokenizer, sample_prefix_lengths


def tiny(**overrides):
    torch.manual_seed(0)
    return Tokenizer(TokConfig.preset('tiny', **overrides)).eval()


def test_latent_i_encoding_ignores_latents_after_i():
    tok, x = tiny(), torch.rand(2, 3, 32, 32) * 2 - 1
    before = tok.encode_latents(x)
    with torch.no_grad():
        tok.latent_queries[5] += torch.randn_like(tok.latent_queries[5])
    after = tok.encode_latents(x)
    assert torch.equal(before[:, :5], after[:, :5])
    assert (before[:, 5] - after[:, 5]).abs().max() > 1e-3


def test_full_attention_ablation_lets_later_latents_leak_back():
    tok, x = tiny(causal=False), torch.rand(2, 3, 32, 32) * 2 - 1
    before = tok.encode_latents(x)
    with torch.no_grad():
        tok.latent_queries[5] += torch.randn_like(tok.latent_queries[5])
    assert (before[:, :5] - tok.encode_latents(x)[:, :5]).abs().max() > 1e-4


def sees(mask, n_context):
    """What each kind of query may attend to under an (L, L) mask over [context | latents]: four booleans
    (context sees context, context sees latents, latent sees context, latent sees later latents) and whether a
    latent sees itself and the latents before it."""
    ctx, lat = slice(0, n_context), slice(n_context, None)
    latents = mask[lat, lat]
    return dict(context_sees_context=bool(mask[ctx, ctx].all()), context_sees_latents=bool(mask[ctx, lat].any()),
                latent_sees_context=bool(mask[lat, ctx].all()), latent_sees_later=bool(latents.triu(1).any()),
                latent_sees_earlier=bool(latents[torch.ones_like(latents).tril()].all()))


FULL = dict(context_sees_context=True, context_sees_latents=True, latent_sees_context=True, latent_sees_later=True,
            latent_sees_earlier=True)
CAUSAL_ENCODER = {**FULL, 'context_sees_latents': False, 'latent_sees_later': False}
CAUSAL_DECODER = {**FULL, 'latent_sees_later': False}


@pytest.mark.parametrize('row,spectral,encoder,decoder,schedule', [
    ('titok', False, FULL, FULL, 'uniform'),
    ('spectral', True, FULL, FULL, 'uniform'),
    ('causal', True, CAUSAL_ENCODER, CAUSAL_DECODER, 'uniform'),
    ('full', True, CAUSAL_ENCODER, CAUSAL_DECODER, 'nonuniform_psnr'),
])
def test_each_table4_row_has_its_attention_pattern_and_schedule(row, spectral, encoder, decoder, schedule):
    tok = Tokenizer(TokConfig.preset('tiny', row))
    patches = tok.grid ** 2
    assert sees(tok.enc_mask, patches) == encoder and sees(tok.dec_mask, patches) == decoder
    assert (tok.config.spectral, tok.config.schedule, tok.config.ablation) == (spectral, schedule, row)
    assert TokConfig.preset('titok_b64', row).schedule == ('nonuniform' if row == 'full' else 'uniform')


def test_titok_row_encoder_patches_carry_later_latents_back_to_earlier_ones():
    """TiTok's full-attention encoder: a later latent query reaches an earlier latent, also through the patches
    (a mask where only latents saw each other would leave that path closed); the causal rows close both paths."""
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    for row, leaks in (('titok', True), ('spectral', True), ('causal', False), ('full', False)):
        torch.manual_seed(0)
        tok = Tokenizer(TokConfig.preset('tiny', row)).eval()  # 2 blocks: latent -> patch, then patch -> latent
        patches = tok.grid ** 2
        with torch.no_grad():
            tok.enc_mask[patches:, patches:] = torch.eye(8, dtype=torch.bool)  # latents see only themselves...
        before = tok.encode_latents(x)
        with torch.no_grad():
            tok.latent_queries[5] += torch.randn_like(tok.latent_queries[5])
        changed = (before[:, :5] - tok.encode_latents(x)[:, :5]).abs().max() > 1e-5  # ...so only patches can carry it
        assert bool(changed) == leaks, row


def test_earlier_checkpoints_read_as_their_row_and_the_non_causal_encoder_is_refused_with_the_fix(tmp_path):
    from tokenizer import config_of_checkpoint
    old = {'config': {**TokConfig.preset('tiny').__dict__, 'causal': False}}
    old['config'].pop('spectral')
    with pytest.raises(ValueError, match='--ablation spectral'):
        config_of_checkpoint(old, 'old.pt')
    old['config']['causal'] = True  # earlier causal checkpoints are what they were
    assert config_of_checkpoint(old, 'old.pt').spectral
    old['args'] = {'no_spectral': True}  # ... supervised on the full image alone when trained with --no_spectral
    assert not config_of_checkpoint(old, 'old.pt').spectral


def test_decoding_prefix_i_ignores_codes_after_i_and_prefixes_differ_per_sample():
    tok = tiny()
    idx = torch.randint(0, 64, (3, 8))
    other = idx.clone()
    other[:, 3:] = torch.randint(0, 64, (3, 5))
    torch.testing.assert_close(tok.decode(idx[:, :3]), tok.decode(other, prefix_len=torch.full((3,), 3)), rtol=0, atol=1e-6)
    assert not torch.allclose(tok.decode(idx[:, :4]), tok.decode(other[:, :4]))
    mixed = tok.decode(idx, prefix_len=torch.tensor([2, 8, 5]))
    for b, n in enumerate([2, 8, 5]):
        torch.testing.assert_close(mixed[b], tok.decode(idx[b:b + 1, :n])[0], rtol=0, atol=1e-5)


def test_quantizer_straight_through_and_float32_distances_under_autocast():
    tok = tiny().train()
    z = torch.randn(2, 8, 8, requires_grad=True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        zq, idx, loss = tok.quantizer(z)
    assert zq.dtype == torch.float32 and idx.shape == (2, 8)
    torch.testing.assert_close(zq, tok.quantizer.lookup(idx))
    zq.sum().backward()
    torch.testing.assert_close(z.grad.abs().sum() > 0, torch.tensor(True))
    assert tok.quantizer.usage.sum() == 16


def test_dead_codes_restart_from_encoder_outputs():
    q = tiny().quantizer
    usage = torch.zeros(64)
    usage[:10] = 1
    candidates = F.normalize(torch.randn(5, 8), dim=-1)
    assert q.restart_dead_codes(usage, candidates, torch.Generator().manual_seed(0)) == 54
    restarted = q.codebook.weight[10:]
    assert all(any(torch.equal(r, c) for c in candidates) for r in restarted)


def test_restarted_codes_take_the_same_values_in_the_ema_codebook_and_live_codes_keep_their_averages():
    q = tiny().quantizer
    ema = copy.deepcopy(q)
    with torch.no_grad():
        ema.codebook.weight.mul_(0.5)  # an average that lags the live codebook
    averages = ema.codebook.weight.clone()
    usage = torch.zeros(64)
    usage[:10] = 1
    q.restart_dead_codes(usage, F.normalize(torch.randn(5, 8), dim=-1), torch.Generator().manual_seed(0), ema=ema)
    assert torch.equal(ema.codebook.weight[10:], q.codebook.weight[10:])
    assert torch.equal(ema.codebook.weight[:10], averages[:10])


@pytest.mark.parametrize('full_prob', [0.0, 0.5])
def test_prefix_lengths_are_uniform_plus_the_extra_mass_on_the_full_prefix(full_prob):
    N, count = 8, 200_000
    prefix = sample_prefix_lengths(N, count, torch.Generator().manual_seed(0), full_prob)
    freq = torch.bincount(prefix, minlength=N + 1)[1:].double() / count
    expected = torch.full((N,), (1 - full_prob) / N, dtype=torch.float64)
    expected[-1] += full_prob
    torch.testing.assert_close(freq, expected, rtol=0, atol=0.004)  # >= 3.6 standard errors at 200k draws
    if full_prob == 0:  # the default draws what the trainer drew before the option existed
        assert torch.equal(prefix, torch.randint(1, N + 1, (count,), generator=torch.Generator().manual_seed(0)))


def test_tiny_tokenizer_overfits_four_images_at_every_prefix(cifar_images):
    """Algorithm 1 on four real images, with the dead-code restarts train_tok.py uses against collapse."""
    x = cifar_images[:4]
    torch.manual_seed(0)
    tok = Tokenizer(TokConfig.preset('tiny', width=96))
    N = tok.config.n_tokens

    def errors():
        tok.eval()
        idx = tok.encode(x)
        errs = [F.mse_loss(tok.decode(idx[:, :n]), lowpass(x, tok.omegas[n - 1]).clamp(-1, 1)).item() for n in (1, N // 2, N)]
        tok.train()
        return errs

    untrained = errors()
    opt = torch.optim.AdamW(tok.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    for step in range(1, 501):
        prefix = torch.randint(1, N + 1, (len(x),), generator=gen)
        recon, vq, _ = tok(x, prefix)
        loss = F.mse_loss(recon, lowpass(x, tok.omegas[prefix - 1])) + vq
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 0 and step <= 400:
            q = tok.quantizer
            q.restart_dead_codes(q.usage.clone(), q.last_z.flatten(0, 1), gen)
    trained = errors()
    for before, after, bound in zip(untrained, trained, (0.025, 0.035, 0.06)):
        assert after < bound and after < before / 3, (untrained, trained)  # the images have variance ~0.25


def test_training_forward_compiles_to_one_graph():
    """A graph break (bincount's data-dependent shape did it) splits torch.compile's forward and backward and
    made the titok_b64 step host-bound on an H100 (docs/performance.md)."""
    tok = Tokenizer(TokConfig.preset('tiny')).train()
    x = torch.rand(4, 3, tok.config.image_size, tok.config.image_size) * 2 - 1
    explanation = torch._dynamo.explain(tok)(x, torch.tensor([1, 3, 5, 8]))
    assert explanation.graph_break_count == 0, [b.reason for b in explanation.break_reasons]
    assert tok.quantizer.usage.sum() == 4 * tok.config.n_tokens  # the count still happened (in the traced run)


def decoder_with_tanh_gelu(tok):
    tanh = copy.deepcopy(tok)
    for block in tanh.decoder:
        block.mlp[1] = nn.GELU(approximate='tanh')
    return tanh


def test_tanh_gelu_of_bf16_inference_is_far_below_bf16_rounding():
    """Block.mlp_out uses cuBLASLt's GELU epilogue, the tanh form, for bf16 inference on CUDA; training uses the
    exact GELU. The gap between the two is bounded, and through a decoder it is tiny next to bf16's own error."""
    x = torch.linspace(-10, 10, 200_001, dtype=torch.float64)
    assert (F.gelu(x) - F.gelu(x, approximate='tanh')).abs().max() < 4.8e-4
    torch.manual_seed(0)
    tok = Tokenizer(TokConfig.preset('cifar')).eval()
    idx = torch.randint(0, tok.config.codebook_size, (8, tok.config.n_tokens))
    exact = tok.decode(idx)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        bf16_error = (tok.decode(idx).float() - exact).abs().max()
    assert (decoder_with_tanh_gelu(tok).decode(idx) - exact).abs().max() < bf16_error / 10


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_bf16_decode_runs_the_gelu_epilogue_within_bf16_error(monkeypatch):
    """The CUDA path itself: one fused fc1 + GELU per decoder block, as close to the float32 decode as the exact
    GELU in bf16 is; training (grad on) keeps the exact GELU."""
    torch.manual_seed(0)
    tok = Tokenizer(TokConfig.preset('cifar')).cuda().eval()
    idx = torch.randint(0, tok.config.codebook_size, (8, tok.config.n_tokens), device='cuda')
    exact = tok.decode(idx)
    calls, fused_gelu = [], torch._addmm_activation
    monkeypatch.setattr(torch, '_addmm_activation', lambda *a, **k: calls.append(1) or fused_gelu(*a, **k))
    with torch.autocast('cuda', dtype=torch.bfloat16):
        fused = tok.decode(idx).float()
        assert len(calls) == tok.config.depth
        with torch.enable_grad():
            exact_bf16 = tok.decode_codes(tok.quantizer.lookup(idx)).float().clamp(-1, 1)
        assert len(calls) == tok.config.depth
    assert (fused - exact).abs().max() < 1.5 * (exact_bf16 - exact).abs().max()
