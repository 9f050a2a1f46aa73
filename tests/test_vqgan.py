"""vqgan.py, the MaskGIT VQGAN of TiTok's proxy codes, and the tokenizer's proxy-code stages, without the real weights."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from dct import lowpass, omega_schedule
from tokenizer import TokConfig, Tokenizer, proxy_code_loss
from vqgan import VQGAN, VQGANConfig, load_vqgan

# a VQGAN of the official design that downsamples by 8, the tiny tokenizer preset's patch size at 32 px
TINY = VQGANConfig(base_channels=32, channel_mult=(1, 1, 2, 2), res_blocks=1, code_dim=16, codebook_size=64)

# keys and shapes of maskgit-vqgan-imagenet-f16-256.bin, as TiTok's modeling/modules/maskgit_vqgan.py names them
OFFICIAL_KEYS = {
    'encoder.conv_in.weight': (128, 3, 3, 3),
    'encoder.down.2.block.0.nin_shortcut.weight': (256, 256, 1, 1),
    'encoder.down.4.block.1.conv2.weight': (512, 512, 3, 3),
    'encoder.mid.1.norm2.bias': (512,),
    'encoder.conv_out.bias': (256,),
    'decoder.conv_in.weight': (512, 256, 3, 3),
    'decoder.up.4.upsample_conv.weight': (512, 512, 3, 3),
    'decoder.up.1.block.0.nin_shortcut.weight': (128, 128, 1, 1),
    'decoder.conv_out.weight': (3, 128, 3, 3),
    'quantize.embedding.weight': (1024, 256),
}


def save_random_vqgan(path, config=TINY, seed=0):
    torch.manual_seed(seed)
    vqgan = VQGAN(config)
    torch.save(vqgan.state_dict(), path)
    return vqgan.eval()


def test_official_layout_with_random_weights_round_trips_through_the_loader(tmp_path):
    saved = save_random_vqgan(tmp_path / 'maskgit-vqgan-imagenet-f16-256.bin', VQGANConfig())
    state = saved.state_dict()
    assert {k: tuple(state[k].shape) for k in OFFICIAL_KEYS} == OFFICIAL_KEYS
    assert sum(v.numel() for v in state.values()) == 54_515_587  # encoder 23.8M, decoder 30.5M, codebook 0.26M
    loaded = load_vqgan(str(tmp_path / 'maskgit-vqgan-imagenet-f16-256.bin'))
    assert loaded.config == VQGANConfig() and not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, state[k]), k
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    codes = loaded.encode(x)
    assert codes.shape == (2, 4, 4) and torch.equal(codes, saved.encode(x))
    assert loaded.decode_codes(codes).shape == (2, 3, 64, 64)


def test_missing_or_wrong_weights_stop_with_where_to_get_them(tmp_path):
    with pytest.raises(FileNotFoundError, match='do not exist.*fun-research/TiTok'):
        load_vqgan(str(tmp_path / 'absent.bin'))
    state = VQGAN(TINY).state_dict()
    renamed = {k.replace('quantize.embedding', 'quantize.codebook'): v for k, v in state.items()}
    reshaped = {**state, 'decoder.conv_out.bias': torch.zeros(4)}
    extra = {**state, 'encoder.down.0.block.0.nin_shortcut.weight': torch.zeros(32, 32, 1, 1)}
    cases = {'renamed': (renamed, 'not a MaskGIT VQGAN state dict.*quantize.embedding.weight'),
             'reshaped': (reshaped, r'decoder.conv_out.bias is \(4,\), expected \(3,\)'),
             'extra': (extra, 'unexpected encoder.down.0.block.0.nin_shortcut.weight'),
             'not_a_dict': ([torch.zeros(1)], 'not a state dict of tensors')}
    for name, (obj, message) in cases.items():
        torch.save(obj, tmp_path / f'{name}.bin')
        with pytest.raises(ValueError, match=message + '.*fun-research/TiTok'):
            load_vqgan(str(tmp_path / f'{name}.bin'))
    (tmp_path / 'bytes.bin').write_bytes(b'not weights at all')
    with pytest.raises(ValueError, match='cannot be read as VQGAN weights.*fun-research/TiTok'):
        load_vqgan(str(tmp_path / 'bytes.bin'))


def proxy_tokenizer(stage, vqgan, ablation='full'):
    """The tiny tokenizer with the proxy-code decoder of stage 1 or 2 and vqgan's codebook and decoder in it."""
    tok = Tokenizer(TokConfig.preset('tiny', ablation, stage=stage, proxy_vqgan=dataclasses.asdict(vqgan.config)))
    tok.pixel_quantize.load_state_dict(vqgan.quantize.state_dict())
    tok.pixel_decoder.load_state_dict(vqgan.decoder.state_dict())
    return tok


def test_proxy_target_of_prefix_i_is_the_vqgan_codes_of_lowpass_at_w_i(cifar_images, tmp_path):
    vqgan = save_random_vqgan(tmp_path / 'vqgan.bin')
    tok = proxy_tokenizer(1, vqgan)
    prefix = torch.tensor([1, 2, 3, 4, 5, 6, 7, 8])
    omegas = omega_schedule(tok.config.n_tokens, 32, tok.config.schedule)
    expected = torch.cat([vqgan.encode(lowpass(x[None], omegas[i - 1])) for x, i in zip(cifar_images, prefix.tolist())])
    full_image_codes = vqgan.encode(cifar_images)
    assert (expected != full_image_codes).any()  # else the test could not tell the targets apart

    def one_hot_logits(codes):
        return 30.0 * F.one_hot(codes.flatten(1), TINY.codebook_size).float()  # (B, P, K), row-major patches

    targets, decoded_prefix = tok.prefix_targets(cifar_images, prefix)
    assert torch.equal(decoded_prefix, prefix)
    assert proxy_code_loss(one_hot_logits(expected), vqgan, targets) < 1e-6
    assert proxy_code_loss(one_hot_logits(full_image_codes), vqgan, targets) > 1
    assert proxy_code_loss(one_hot_logits(expected.transpose(1, 2)), vqgan, targets) > 1  # patch order matters

    # TiTok's row of Table 4: every prefix is the full N tokens and its target the image itself
    targets, decoded_prefix = proxy_tokenizer(1, vqgan, 'titok').prefix_targets(cifar_images, prefix)
    assert (decoded_prefix == 8).all()
    assert proxy_code_loss(one_hot_logits(full_image_codes), vqgan, targets) < 1e-6


def test_stage_one_decodes_the_most_likely_codes_and_stage_two_their_soft_embedding(cifar_images, tmp_path):
    vqgan = save_random_vqgan(tmp_path / 'vqgan.bin')
    stage_one, stage_two = proxy_tokenizer(1, vqgan), proxy_tokenizer(2, vqgan)
    stage_two.load_state_dict(stage_one.state_dict())  # stage 2 starts from stage 1's weights under the same names
    codes = stage_one.encode(cifar_images)
    logits, _, _ = stage_one(cifar_images)
    assert logits.shape == (8, stage_one.grid ** 2, TINY.codebook_size)
    most_likely = logits.argmax(-1).unflatten(1, (stage_one.grid, stage_one.grid))
    torch.testing.assert_close(stage_one.decode(codes), vqgan.decode_codes(most_likely).clamp(-1, 1))

    recon, _, _ = stage_two(cifar_images)
    recon.square().mean().backward()
    trainable = {name.split('.')[0] for name, p in stage_two.named_parameters() if p.requires_grad}
    assert trainable >= {'to_proxy_logits', 'pixel_decoder', 'pixel_quantize', 'decoder'}
    assert not trainable & {'encoder', 'quantizer', 'to_code', 'patch_embed'}
    assert stage_two.to_proxy_logits[2].weight.grad.abs().sum() > 0  # the soft embedding passes gradients to the logits
    assert not any(p.requires_grad for p in stage_one.pixel_decoder.parameters())


def test_proxy_codes_need_one_vqgan_code_per_tokenizer_patch():
    f16 = dataclasses.asdict(VQGANConfig(base_channels=32, channel_mult=(1, 1, 1, 1, 1), res_blocks=1))
    with pytest.raises(ValueError, match='VQGAN downsamples by 16 and the tokenizer.s patches are 8 px'):
        Tokenizer(TokConfig.preset('tiny', stage=1, proxy_vqgan=f16))
