"""
Nested Spectral Tokenizer (SpectralAR section 3.1-3.2): a TiTok-style 1D ViT tokenizer whose first i
tokens reconstruct the DCT low-pass of the image that keeps the top-left w_i x w_i coefficients.

Encoder: [patch tokens | N latent queries] -> pre-LN ViT -> latents -> VQ codes (B, N).
Decoder: [one mask token per patch | quantized latents 1..i] -> pre-LN ViT -> pixels.
The spectral causal mask lets latent i see only latents <= i (encoder and decoder), so a prefix of
i codes is a self-contained description of the image at frequency w_i.

Table 4's rows are ABLATIONS: TiTok (full attention, every token rebuilds the full image), + spectral
supervision, + spectral causal mask, + non-uniform mapping (SpectralAR).

TiTok's two-stage recipe (config.stage 1 and 2, train_tok.py --stage): the decoder's head predicts, per patch, the
code of a pretrained MaskGIT VQGAN (vqgan.py), and that VQGAN's decoder, held here, makes the pixels.
"""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from common import ema_or_model, load_checkpoint
from data import save_grid
from dct import lowpass, omega_schedule
from vqgan import Codebook, Decoder, VQGANConfig


@dataclass
class TokConfig:
    image_size: int = 256
    patch_size: int = 16
    width: int = 768  # encoder and decoder ViT width, depth and heads (TiTok-B uses ViT-B for both)
    depth: int = 12
    heads: int = 12
    n_tokens: int = 64
    codebook_size: int = 4096
    code_dim: int = 12  # TiTok's low-dimensional codes
    l2_norm_codes: bool = True  # cosine-similarity lookup: keeps the codebook well used
    commitment: float = 0.25
    spectral: bool = True  # prefix i rebuilds lowpass(image, w_i); False: TiTok, all N tokens rebuild the image
    causal: bool = True  # spectral causal mask; False: TiTok's full attention among patches and latents
    schedule: str = 'nonuniform'  # w_i mapping, one of dct.SCHEDULES: 'nonuniform' is eq. (9)
    # TiTok's training stage the decoder is built for. 0: single stage, the decoder outputs pixels. 1: it outputs
    # logits over the proxy_vqgan's codes per patch (pixels: each patch's most likely code through the VQGAN decoder,
    # frozen). 2: the codes' soft embedding through the VQGAN decoder, fine-tuned with the decoder; encoder frozen.
    stage: int = 0
    proxy_vqgan: dict | None = None  # stages 1 and 2: the vqgan.VQGANConfig (as a dict) of the proxy codes' VQGAN

    @staticmethod
    def preset(name, ablation='full', **overrides):
        """The preset's config as Table 4's row `ablation` (ABLATIONS), with the overrides that are not None."""
        if name not in PRESETS:
            raise ValueError(f"unknown tokenizer preset {name!r}; choose from {sorted(PRESETS)}")
        row = {k: v for k, v in ABLATIONS[ablation].items() if v is not None}
        return TokConfig(**{**PRESETS[name], **row, **{k: v for k, v in overrides.items() if v is not None}})

    @property
    def ablation(self):
        """Table 4's row of this config (the reverse of ABLATIONS; a row whose schedule was overridden reads as
        'causal' for uniform and 'full' otherwise)."""
        if not self.spectral:
            return 'titok'
        if not self.causal:
            return 'spectral'
        return 'causal' if self.schedule == 'uniform' else 'full'


# Table 4's rows, each adding one ingredient to the row before; schedule None keeps the preset's non-uniform one
ABLATIONS = {
    'titok': dict(spectral=False, causal=False, schedule='uniform'),  # the schedule is unused: no prefixes
    'spectral': dict(spectral=True, causal=False, schedule='uniform'),
    'causal': dict(spectral=True, causal=True, schedule='uniform'),
    'full': dict(spectral=True, causal=True, schedule=None),
}


PRESETS = {
    'titok_b64': dict(),  # the paper's setting: 256 px, patch 16, ViT-B/ViT-B, N=64, K=4096
    # CIFAR-10, chosen for a ~10 H100-minute budget rather than by a sweep: patch 4 (8x8 grid), ViT 384x6
    # (21M params, small enough to ship as a checkpoint), N=32 tokens, K=1024; scripts/cifar10.sh's recipe
    # raises K to 4096, which won its search by rFID with every code used. At 32 px with N=32 eq. (9)'s rule of
    # one new frequency per token makes 'nonuniform' equal 'uniform' (dct.omega_schedule), so the small presets
    # take 'nonuniform_psnr', eq. (9)'s information per token measured on CIFAR-10 (docs/results.md).
    'cifar': dict(image_size=32, patch_size=4, width=384, depth=6, heads=6, n_tokens=32, codebook_size=1024,
                  schedule='nonuniform_psnr'),
    'tiny': dict(image_size=32, patch_size=8, width=32, depth=2, heads=2, n_tokens=8, codebook_size=64, code_dim=8,
                 schedule='nonuniform_psnr'),
}


class Block(nn.Module):
    """Pre-LN transformer block; attention takes an explicit boolean mask (True = may attend)."""

    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x, mask):
        B, L, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.proj(attn.transpose(1, 2).reshape(B, L, D))
        return x + self.mlp_out(self.ln2(x))

    def mlp_out(self, h):
        """The MLP branch, fc2(GELU(fc1(h)))."""
        fc1, fc2 = self.mlp[0], self.mlp[2]
        dtype = torch.get_autocast_dtype('cuda') if torch.is_autocast_enabled('cuda') else fc1.weight.dtype
        if h.is_cuda and dtype == torch.bfloat16 and not torch.is_grad_enabled():
            # bf16 inference: fc1 and its GELU as one GEMM (cuBLASLt's bias + GELU epilogue), which saves a pass
            # over the 4x-wide activations, 8% of a decode (docs/performance.md). That
            # GELU is the tanh form; its gap to the exact one training uses (< 4.8e-4) is far below bf16's rounding
            # (tests/test_tokenizer.py).
            h = torch._addmm_activation(fc1.bias.to(dtype), h.flatten(0, -2).to(dtype), fc1.weight.to(dtype).t(),
                                        use_gelu=True).view(*h.shape[:-1], -1)
        else:
            h = self.mlp[1](fc1(h))
        return fc2(h)


class VectorQuantizer(nn.Module):
    """Nearest-code lookup with straight-through gradients, codebook + commitment loss, usage tracking."""

    def __init__(self, size, dim, l2_norm, commitment):
        super().__init__()
        self.l2_norm, self.commitment = l2_norm, commitment
        self.codebook = nn.Embedding(size, dim)
        nn.init.uniform_(self.codebook.weight, -1.0 / size, 1.0 / size)
        self.register_buffer('usage', torch.zeros(size))  # code counts since the last restart (saved: exact resume)

    def codes(self):
        w = self.codebook.weight.float()
        return F.normalize(w, dim=-1) if self.l2_norm else w

    def forward(self, z):
        with torch.autocast(z.device.type, enabled=False):  # distances in float32, bf16 would mis-assign codes
            z = z.float()
            if self.l2_norm:
                z = F.normalize(z, dim=-1)
            codebook = self.codes()
            dist = z.pow(2).sum(-1, keepdim=True) - 2 * z @ codebook.T + codebook.pow(2).sum(-1)
            idx = dist.argmin(-1)
            zq = codebook[idx]
            loss = F.mse_loss(zq, z.detach()) + self.commitment * F.mse_loss(z, zq.detach())
            if self.training:
                # index_add_, not bincount: bincount's output shape depends on the data, which breaks a
                # compiled forward (and backward) at this line: four graphs instead of one
                self.usage.index_add_(0, idx.flatten(), torch.ones(idx.numel(), device=idx.device, dtype=self.usage.dtype))
            self.last_z = z.detach()  # the trainer restarts dead codes from these
            return z + (zq - z).detach(), idx, loss

    def lookup(self, idx):
        return self.codes()[idx]

    @torch.no_grad()
    def restart_dead_codes(self, usage, candidates, generator, ema=None):
        """Re-seed codes that were never picked (usage == 0) with random encoder outputs; returns how many.
        ema: the EMA copy of this quantizer, whose restarted rows get the same values. Averaged in, a fresh code
        would stay a blend of itself and the dead code it replaced for the EMA's memory (~1 / (1 - decay) steps),
        and the EMA model is the one that encodes and is scored; its live codes keep their averages."""
        dead = (usage == 0).nonzero().flatten()
        if len(dead):
            # distinct candidates where there are enough: duplicated codes would tie in the argmin
            pick = torch.randperm(max(len(candidates), len(dead)), generator=generator, device=generator.device)[:len(dead)]
            pick = pick % len(candidates)
            self.codebook.weight[dead] = candidates[pick.to(candidates.device)].to(self.codebook.weight.dtype)
            if ema is not None:
                ema.codebook.weight[dead] = self.codebook.weight[dead].to(ema.codebook.weight.dtype)
        self.usage.zero_()
        return len(dead)


def sample_prefix_lengths(n_tokens, count, generator, full_prob=0.0):
    """Algorithm 1's prefix lengths i, uniform over 1..N, with full_prob of extra mass on i = N: the full image,
    the target that rFID scores, is otherwise drawn 1 time in N."""
    prefix = torch.randint(1, n_tokens + 1, (count,), generator=generator)
    if full_prob > 0:  # drawn only then, so that full_prob = 0 takes no extra numbers from the step's random stream
        prefix = torch.where(torch.rand(count, generator=generator) < full_prob, n_tokens, prefix)
    return prefix


def spectral_mask(n_context, n_tokens, causal, decoder):
    """
    (L, L) bool mask (True = may attend) over [context (patches or mask tokens) | latent tokens].
    causal=False is TiTok's full attention: everything sees everything. causal=True is the spectral causal mask:
    latent i sees all context and the latents <= i; encoder patches see patches only (through a patch, latent i
    would see latents after it); decoder mask tokens see the latents, whose prefix limit decode_codes applies per
    sample, hiding the latents past each sample's prefix from every query.
    """
    L = n_context + n_tokens
    if not causal:
        return torch.ones(L, L, dtype=torch.bool)
    allow = torch.zeros(L, L, dtype=torch.bool)
    allow[:, :n_context] = True
    allow[n_context:, n_context:] = torch.ones(n_tokens, n_tokens, dtype=torch.bool).tril()
    if decoder:
        allow[:n_context, n_context:] = True
    return allow


class Tokenizer(nn.Module):
    def __init__(self, config):
        super().__init__()
        assert config.image_size % config.patch_size == 0, "image_size must be a multiple of patch_size"
        self.config = config
        D, p, N = config.width, config.patch_size, config.n_tokens
        self.grid = config.image_size // p
        P = self.grid ** 2
        scale = D ** -0.5
        # encoder
        self.patch_embed = nn.Conv2d(3, D, p, stride=p)
        self.enc_pos = nn.Parameter(scale * torch.randn(P, D))
        self.latent_queries = nn.Parameter(scale * torch.randn(N, D))
        self.enc_latent_pos = nn.Parameter(scale * torch.randn(N, D))
        self.encoder = nn.ModuleList(Block(D, config.heads) for _ in range(config.depth))
        self.enc_ln = nn.LayerNorm(D)
        self.to_code = nn.Linear(D, config.code_dim)
        self.quantizer = VectorQuantizer(config.codebook_size, config.code_dim, config.l2_norm_codes, config.commitment)
        # decoder
        self.from_code = nn.Linear(config.code_dim, D)
        self.mask_token = nn.Parameter(scale * torch.randn(D))
        self.dec_pos = nn.Parameter(scale * torch.randn(P, D))
        self.dec_latent_pos = nn.Parameter(scale * torch.randn(N, D))
        self.decoder = nn.ModuleList(Block(D, config.heads) for _ in range(config.depth))
        self.dec_ln = nn.LayerNorm(D)
        if config.stage == 0:
            self.to_pixels = nn.Linear(D, p * p * 3)  # TiTok's single-stage head: 1x1 -> p*p*3, unpatchify, 3x3 conv
            self.pixel_conv = nn.Conv2d(3, 3, 3, padding=1)
        else:
            self.build_proxy_head(config)

        self.register_buffer('enc_mask', spectral_mask(P, N, config.causal, decoder=False), persistent=False)
        self.register_buffer('dec_mask', spectral_mask(P, N, config.causal, decoder=True), persistent=False)
        self.register_buffer('omegas', torch.tensor(omega_schedule(N, config.image_size, config.schedule)), persistent=False)
        self.apply(self._init_weights)
        self.freeze(FROZEN_IN_STAGE.get(config.stage, ()))

    def freeze(self, top_level_names):
        """Stop training the parameters under these top-level names (e.g. ENCODER_SIDE)."""
        for name, param in self.named_parameters():
            if name.split('.')[0] in top_level_names:
                param.requires_grad_(False)

    def build_proxy_head(self, config):
        """The decoder of stages 1 and 2: TiTok's proxy-code head (per patch: 1x1 conv to 2 x width, tanh, 1x1 conv to
        the VQGAN's codebook) and the VQGAN's codebook and decoder (pixel_quantize, pixel_decoder: TiTok's names),
        which train_tok.py fills from the VQGAN's weights file at the start of stage 1."""
        vq = VQGANConfig(**config.proxy_vqgan)
        if vq.downsample != config.patch_size:
            raise ValueError(f"proxy codes need one VQGAN code per tokenizer patch, but the VQGAN downsamples by {vq.downsample} "
                             f"and the tokenizer's patches are {config.patch_size} px: use a tokenizer preset with patch size "
                             f"{vq.downsample} (titok_b64 for TiTok's f16 VQGAN) or a VQGAN that downsamples by {config.patch_size}")
        D = config.width
        self.to_proxy_logits = nn.Sequential(nn.Linear(D, 2 * D), nn.Tanh(), nn.Linear(2 * D, vq.codebook_size))
        self.pixel_quantize = Codebook(vq.codebook_size, vq.code_dim)
        self.pixel_decoder = Decoder(vq)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)

    def no_weight_decay(self):
        return ('pos', 'latent_queries', 'mask_token', 'codebook', 'pixel_quantize')

    def encode_latents(self, x):
        """Images in [-1, 1] (B, 3, H, W) -> continuous pre-quantization latents (B, N, code_dim)."""
        h = self.patch_embed(x).flatten(2).transpose(1, 2) + self.enc_pos
        h = torch.cat([h, (self.latent_queries + self.enc_latent_pos).expand(len(x), -1, -1)], dim=1)
        for block in self.encoder:
            h = block(h, self.enc_mask)
        return self.to_code(self.enc_ln(h[:, -self.config.n_tokens:]))

    def decode_codes(self, zq, prefix_len=None):
        """Quantized latents (B, n, code_dim), n <= N, -> images. prefix_len (B,) hides each sample's latents past
        its own prefix (a per-sample mask); None decodes all n, on P + n tokens under the static spectral mask,
        which spares SDPA reading a (B, L, L) mask (sampling decodes this way)."""
        h = self.decode_patches(zq, prefix_len)
        if self.config.stage:
            return self.pixels_of_proxy_logits(self.to_proxy_logits(h))
        img = F.fold(self.to_pixels(h).transpose(1, 2), self.config.image_size, self.config.patch_size,
                     stride=self.config.patch_size)
        return self.pixel_conv(img)

    def pixels_of_proxy_logits(self, logits):
        """Proxy-code logits (B, P, K) -> images through the VQGAN decoder. Stage 1 decodes each patch's most likely
        code, as TiTok scores its stage 1; stage 2 the codes' expected embedding under softmax(logits), as TiTok's
        stage 2 trains and decodes: it passes the pixel losses' gradients on to the logits."""
        codebook = self.pixel_quantize.embedding.weight
        embeddings = codebook[logits.argmax(-1)] if self.config.stage == 1 else logits.softmax(-1) @ codebook
        return self.pixel_decoder(embeddings.transpose(1, 2).unflatten(2, (self.grid, self.grid)))

    def decode_patches(self, zq, prefix_len):
        """The decoder transformer: quantized latents -> the normalized features of the P patch tokens (B, P, width)."""
        B, n, P = len(zq), zq.shape[1], self.grid ** 2
        h = torch.cat([(self.mask_token + self.dec_pos).expand(B, -1, -1),
                       self.from_code(zq) + self.dec_latent_pos[:n]], dim=1)
        mask = self.dec_mask[:P + n, :P + n]
        if prefix_len is not None:
            visible = torch.ones(B, P + n, dtype=torch.bool, device=zq.device)
            visible[:, P:] = torch.arange(n, device=zq.device) < prefix_len[:, None]
            mask = (mask & visible[:, None, :])[:, None]  # (B, 1, L, L)
        for block in self.decoder:
            h = block(h, mask)
        return self.dec_ln(h[:, :P])

    def forward(self, x, prefix_len=None):
        """Training pass: returns (decoder output from each sample's prefix (all N tokens when None), VQ loss, codes).
        The output is the reconstruction; in stage 1 the proxy-code logits (B, P, K), P patches in row-major order."""
        zq, idx, vq_loss = self.quantizer(self.encode_latents(x))
        zq = zq.to(x.dtype)
        if self.config.stage == 1:
            return self.to_proxy_logits(self.decode_patches(zq, prefix_len)), vq_loss, idx
        return self.decode_codes(zq, prefix_len), vq_loss, idx

    def prefix_targets(self, x, prefix):
        """Algorithm 1: the target of a prefix of i tokens is the w_i x w_i DCT low-pass of the image (TiTok's row:
        the image itself, from all N tokens). Returns (targets, the prefix lengths to decode)."""
        if not self.config.spectral:
            return x, torch.full_like(prefix, self.config.n_tokens)
        return lowpass(x, self.omegas[prefix - 1]), prefix

    @torch.no_grad()
    def encode(self, x):
        """Images in [-1, 1] -> LongTensor (B, N) of codes."""
        return self.quantizer(self.encode_latents(x))[1]

    @torch.no_grad()
    def decode(self, idx, prefix_len=None):
        """Codes (B, n) with n <= N (a prefix) -> images in [-1, 1]. prefix_len (B,) may cut further per sample."""
        if idx.shape[1] > self.config.n_tokens:
            raise ValueError(f"got {idx.shape[1]} tokens but this tokenizer has N = {self.config.n_tokens}")
        return self.decode_codes(self.quantizer.lookup(idx), prefix_len).clamp(-1, 1)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    @staticmethod
    def from_checkpoint(path, device='cpu', use_ema=True):
        """Rebuild a tokenizer from a train_tok.py checkpoint alone (EMA weights when present). Its exported_from is
        the record of the checkpoint a weights-only export (scripts/export_weights.py) came from, else None; its
        codes_from the sha256 of the tokenizer files whose codes it shares (a decoder fine-tuning's), else []."""
        ckpt = load_checkpoint(path, 'tokenizer')
        tok = Tokenizer(config_of_checkpoint(ckpt, path))
        tok.load_state_dict(ema_or_model(ckpt) if use_ema else ckpt['model'])
        tok.exported_from = ckpt.get('exported_from')
        tok.codes_from = ckpt.get('codes_from', [])
        return tok.to(device).eval()


# what maps an image to its codes (by top-level name): frozen, it keeps every code, so token files and generators made
# with the tokenizer stay valid while its decoder trains on (stage 2, and decoder fine-tuning in train_tok.py)
ENCODER_SIDE = ('patch_embed', 'enc_pos', 'latent_queries', 'enc_latent_pos', 'encoder', 'enc_ln', 'to_code', 'quantizer')
# the parameters (by top-level name) each stage keeps as they are: stage 1 the teacher VQGAN's codebook and decoder,
# which only decode the predicted codes; stage 2, as TiTok's, the encoder side (the codes stay those of stage 1)
FROZEN_IN_STAGE = {1: ('pixel_quantize', 'pixel_decoder'), 2: ENCODER_SIDE}


def proxy_code_loss(logits, vqgan, targets):
    """Stage 1's loss: the cross-entropy of the proxy-code logits (B, P, K) with the VQGAN's codes of the target
    images (B, 3, H, W), whose grid is flattened in the decoder's row-major patch order."""
    return F.cross_entropy(logits.flatten(0, 1).float(), vqgan.encode(targets).flatten())


def config_of_checkpoint(ckpt, path):
    """The TokConfig of a tokenizer checkpoint. Checkpoints from before the `spectral` field whose latents were not
    causal had an encoder whose patches could not see the latents, a mask no row of Table 4 has and this code no
    longer builds: they stop here rather than run under another mask. Their spectral supervision is in their
    arguments (--no_spectral)."""
    config = ckpt['config']
    if 'spectral' not in config:
        if not config.get('causal', True):
            raise ValueError(f"{path!r} was trained with the earlier --no_causal (latents in full attention, encoder "
                             f"patches blind to them), which this version no longer builds: retrain it with "
                             f"train_tok.py --ablation spectral (or titok)")
        config = {**config, 'spectral': not ckpt.get('args', {}).get('no_spectral', False)}
    return TokConfig(**config)


@torch.no_grad()
def save_coarse_to_fine(tok, idx, path, prefix_lens=None, images=None):
    """Figure 1 of the paper as a PNG: per code sequence of idx (B, n), a row of its decodes from the first i tokens
    for each i in prefix_lens (default 1..n), coarse to fine. With images (the encoded originals, in [-1, 1]), each
    row of decodes comes under a row of its targets lowpass(image, w_i), and both rows end with the original."""
    prefix_lens = torch.tensor(list(range(1, idx.shape[1] + 1) if prefix_lens is None else prefix_lens), device=idx.device)
    rows = []
    for i, codes in enumerate(idx):
        decodes = tok.decode(codes.expand(len(prefix_lens), -1), prefix_len=prefix_lens)
        if images is None:
            rows.append(decodes)
        else:
            image = images[i]
            targets = lowpass(image.expand(len(prefix_lens), -1, -1, -1), tok.omegas[prefix_lens - 1])
            rows += [torch.cat([targets, image[None]]), torch.cat([decodes, image[None]])]
    save_grid(torch.cat(rows), path, ncol=len(prefix_lens) + (images is not None))


def flops_per_image(config, decoder_passes=1):
    """Forward matmul FLOPs of one image (encoder + decoder_passes decoders), for MFU; x3 for training."""
    P, N, D = (config.image_size // config.patch_size) ** 2, config.n_tokens, config.width
    L = P + N
    per_block = 2 * L * (12 * D * D) + 2 * 2 * L * L * D  # qkv/proj/mlp weights + QK^T and AV
    patch = 2 * P * (3 * config.patch_size ** 2) * D
    head = 2 * P * D * 3 * config.patch_size ** 2 + 2 * 9 * 3 * 3 * config.image_size ** 2
    return (config.depth * per_block + patch) + decoder_passes * (config.depth * per_block + head)
