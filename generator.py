"""
SpectralAR generator (Huang et al. 2025, sec. 3.3): a class-conditional decoder-only transformer
over the N coarse-to-fine tokens of the 1D spectral tokenizer, built from VAR's block
(FoundationVision/VAR models/basic_var.py): non-affine LayerNorm with per-block AdaLN from the class
embedding, l2-normalised q/k attention with a learnable per-head scale, GELU(tanh) MLP, drop path.

Sequence layout: input = [sos(class), e(t_1), ..., e(t_{N-1})], so logits[:, i] is the distribution
of idx[:, i] given idx[:, :i] and the teacher-forcing target is idx itself (no shift).
Several tokens per step (tokens_per_step = P, the paper's d16-p4): the N tokens form N / P groups of P, and
the tokens of group g are predicted together from the class and groups < g. Input slot i then holds
e(t_{i-P}) (the class in the P slots of group 0) plus position i, and attention is block-causal: a slot sees
every slot of its own and earlier groups. P = 1 is the layout above (GPT.forward says why this design).
The class table has num_classes + 1 rows; row num_classes is the null class (CFG's unconditional
branch). CFG convention (VAR's): logits = (1 + s) * cond - s * uncond, so s = 0 is plain conditional.

Sampling: GPT.generate is the readable reference loop; FastSampler (or generate(..., fast=True)) runs the
same computation with static shapes, weights pre-cast to bf16, one CUDA graph per token step and a Triton
attention kernel over the KV cache (decode_attention), and draws the same random numbers (bench.py sample
times both against the hardware floor).
"""
import math
import weakref
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

try:  # ships with CUDA builds of torch; the fast sampler's attention kernel uses it when present
    import triton
    import triton.language as tl
except ImportError:
    triton = None

MAX_LOG_ATTN_SCALE = math.log(100.0)  # VAR clamps its per-head scale_mul at log(100)

# depth/width/heads per preset; dXX follow VAR (width 64*d, heads d, drop path 0.1*d/24)
PRESETS = {
    **{f'd{d}': dict(depth=d, width=64 * d, heads=d, drop_path=0.1 * d / 24) for d in (16, 20, 24)},
    # CIFAR-10's 50k images are memorised by VAR's regularisation within a few epochs; dropout and drop path
    # 0.1 (with the token file's zoom-crop views, scripts/cifar10.sh) keep the validation NLL within 6% of the
    # training rows' (docs/results.md, generalisation)
    'cifar_d8': dict(depth=8, width=512, heads=8, drop_path=0.1, dropout=0.1, num_classes=10),
    'cifar_d12': dict(depth=12, width=768, heads=12, drop_path=0.1, dropout=0.1, num_classes=10),
    'tiny': dict(depth=2, width=64, heads=4, n_tokens=8, vocab_size=32, num_classes=10),
}
# the paper's #Para column (Tables 2-3); our counts (N=64, K=4096, code embedding table) are
# d16 313.8M (+1.2%), d20 605.3M (+0.9%), d24 1038.7M (+3.9%); tested to be within 5%
PAPER_PARAMS = {'d16': 310e6, 'd20': 600e6, 'd24': 1.0e9}


@dataclass
class GPTConfig:
    depth: int = 16
    width: int = 1024
    heads: int = 16
    n_tokens: int = 64  # N, from the tokenizer
    vocab_size: int = 4096  # K, from the tokenizer
    num_classes: int = 1000
    drop_path: float = 0.0  # rate of the last block; earlier blocks ramp linearly from 0
    dropout: float = 0.0  # on attention probabilities and on each residual branch's output (VAR's attn_drop, drop)
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6
    init_head: float = 0.02  # VAR's init multipliers (utils/arg_util.py: hd, aln, alng)
    init_adaln: float = 0.5
    init_adaln_gamma: float = 1e-5
    tokens_per_step: int = 1  # P: tokens predicted together per step, in groups of P (block-causal); divides n_tokens

    @classmethod
    def preset(cls, name, **overrides):
        return cls(**{**PRESETS[name], **overrides})


def drop_path(x, rate, training):
    """Stochastic depth: drop the whole residual branch per sample, rescale the survivors."""
    if rate == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - rate)
    return x * keep / (1.0 - rate)


def drop_labels(labels, num_classes, prob=0.1, generator=None):
    """CFG training: replace each label by the null class (= num_classes) with probability prob."""
    drop = torch.rand(labels.shape, device=labels.device, generator=generator) < prob
    return labels.masked_fill(drop, num_classes)


def sample_from_logits(logits, temperature=1.0, top_k=0, top_p=0.0, generator=None):
    """Sample one id per row of (..., K) logits on their device; top_k=1 is greedy (argmax)."""
    # exponential race = categorical sample without torch.multinomial's host sync (as in gpt-fast)
    race = torch.empty(logits.shape, dtype=torch.float32, device=logits.device).exponential_(generator=generator)
    return sample_with_race(logits, race, temperature, top_k, top_p)


def sample_with_race(logits, race, temperature=1.0, top_k=0, top_p=0.0):
    """sample_from_logits with its Exp(1) noise `race` (float32, logits' shape) drawn by the caller, so that
    a CUDA graph can replay the sampling on noise written into a static buffer between replays."""
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    if top_k > 0:
        kth_largest = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth_largest, -math.inf)
    if 0.0 < top_p < 1.0:
        # keep the smallest head of the sorted distribution whose mass reaches top_p
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        sorted_probs = sorted_logits.softmax(dim=-1)
        drop_sorted = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), -math.inf)
    probs = logits.softmax(dim=-1)
    return (probs / race.clamp(min=torch.finfo(torch.float32).tiny)).argmax(dim=-1)


class SelfAttention(nn.Module):
    def __init__(self, width, heads, dropout=0.0):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        # VAR biases q and v only: a k bias is a per-query constant that softmax would ignore
        self.q_bias = nn.Parameter(torch.zeros(width))
        self.v_bias = nn.Parameter(torch.zeros(width))
        self.register_buffer('zero_k_bias', torch.zeros(width), persistent=False)
        # q and k are l2-normalised, so the logit temperature is learned per head (VAR's scale_mul_1H11)
        self.log_scale = nn.Parameter(torch.full((1, heads, 1, 1), math.log(4.0)))
        self.proj = nn.Linear(width, width)

    def forward(self, x, kv_cache=None, positions=None, visible=None):
        """Causal over x (or restricted by the boolean mask `visible` (L, L) when given), or, with kv_cache
        (2, B, H, N, D), write x's keys at `positions` and attend to the cached slots allowed by `visible` (L, N)."""
        B, L, C = x.shape
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        q, k, v = F.linear(x, self.qkv.weight, bias).view(B, L, 3, self.heads, -1).unbind(2)  # (B, L, H, D)
        scale = self.log_scale.clamp(max=MAX_LOG_ATTN_SCALE).exp().view(1, 1, self.heads, 1)
        # normalised before the heads move to dim 1: in the qkv matmul's layout, the compiled backward
        # of the l2-norm and scale is one coalesced kernel (docs/performance.md)
        q = (F.normalize(q, dim=-1) * scale.to(q.dtype)).transpose(1, 2)
        k, v = F.normalize(k, dim=-1).transpose(1, 2), v.transpose(1, 2)
        if kv_cache is None:
            # plain causal attention as is_causal (the flash kernels take it without a mask in memory)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=visible, is_causal=visible is None, scale=1.0,
                                                 dropout_p=self.dropout if self.training else 0.0)
        else:
            kv_cache[0].index_copy_(2, positions, k.to(kv_cache.dtype))
            kv_cache[1].index_copy_(2, positions, v.to(kv_cache.dtype))
            out = F.scaled_dot_product_attention(q, kv_cache[0], kv_cache[1], attn_mask=visible, scale=1.0)
        return self.proj(out.transpose(1, 2).reshape(B, L, C))


class Block(nn.Module):
    def __init__(self, cfg, drop_path_rate):
        super().__init__()
        self.width, self.drop_path_rate = cfg.width, drop_path_rate
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.norm_eps, elementwise_affine=False)
        self.attn = SelfAttention(cfg.width, cfg.heads, cfg.dropout)
        hidden = round(cfg.width * cfg.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(cfg.width, hidden), nn.GELU(approximate='tanh'), nn.Linear(hidden, cfg.width))
        self.residual_dropout = nn.Dropout(cfg.dropout)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(cfg.width, 6 * cfg.width))

    def modulation(self, cond):
        """(gate1, gate2, scale1, scale2, shift1, shift2), each (B, 1, C): VAR's channel order."""
        return self.ada_lin(cond).view(-1, 1, 6, self.width).unbind(2)

    def forward(self, x, modulation, kv_cache=None, positions=None, visible=None):
        gate1, gate2, scale1, scale2, shift1, shift2 = modulation
        h = self.residual_dropout(self.attn(self.norm(x) * (1 + scale1) + shift1, kv_cache, positions, visible))
        x = x + drop_path(h * gate1, self.drop_path_rate, self.training)
        h = self.residual_dropout(self.mlp(self.norm(x) * (1 + scale2) + shift2))
        return x + drop_path(h * gate2, self.drop_path_rate, self.training)


class GPT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        C = cfg.width
        self.class_emb = nn.Embedding(cfg.num_classes + 1, C)  # last row: null class, also the sos
        self.tok_emb = nn.Embedding(cfg.vocab_size, C)
        self.pos_emb = nn.Parameter(torch.empty(1, cfg.n_tokens, C))
        # python floats, not torch.linspace, so the model can be built on the meta device
        rates = [cfg.drop_path * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = nn.ModuleList(Block(cfg, rate) for rate in rates)
        self.head_norm = nn.LayerNorm(C, eps=cfg.norm_eps, elementwise_affine=False)
        self.head_ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 2 * C))  # VAR's AdaLNBeforeHead
        self.head = nn.Linear(C, cfg.vocab_size)
        P = cfg.tokens_per_step
        if P < 1 or cfg.n_tokens % P:
            divisors = [d for d in range(1, cfg.n_tokens + 1) if cfg.n_tokens % d == 0]
            raise ValueError(f'tokens_per_step={P} must divide n_tokens={cfg.n_tokens}: use one of {divisors}')
        self.register_buffer('slot_ids', torch.arange(cfg.n_tokens), persistent=False)
        # block_causal[i, j]: slot i may attend to slot j, i.e. j's group is not later than i's (P = 1: causal)
        group = self.slot_ids // P
        self.register_buffer('block_causal', group[None, :] <= group[:, None], persistent=False)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self):
        # VAR's init_weights with its training defaults (init_std=-1 -> sqrt(1 / width / 3))
        cfg, std = self.cfg, math.sqrt(1 / self.cfg.width / 3)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.trunc_normal_(m.weight, std=std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                m.bias.zero_()
        nn.init.trunc_normal_(self.pos_emb, std=std)
        self.head.weight.mul_(cfg.init_head)
        self.head_ada_lin[-1].weight.mul_(cfg.init_adaln)
        for block in self.blocks:
            # residual projections shrink with depth so the residual stream keeps its scale
            block.attn.proj.weight.div_(math.sqrt(2 * cfg.depth))
            block.mlp[-1].weight.div_(math.sqrt(2 * cfg.depth))
            ada_weight = block.ada_lin[-1].weight
            ada_weight[2 * cfg.width:].mul_(cfg.init_adaln)
            ada_weight[:2 * cfg.width].mul_(cfg.init_adaln_gamma)  # gates start near 0: blocks ~identity

    def matmul_param_counts(self):
        """(matmul weights used per token, biases used per token, AdaLN weights and biases used once per
        sequence); embeddings, positions and head scales are gathered rows, not matmuls, and left out."""
        per_token_w, per_token_b, per_seq = 0, 0, 0
        for name, p in self.named_parameters():
            in_block_matmul = name.startswith('blocks.') and ('.attn.qkv.' in name or '.attn.proj.' in name or '.mlp.' in name)
            if 'ada_lin' in name:
                per_seq += p.numel()
            elif name == 'head.weight' or in_block_matmul and name.endswith('.weight'):
                per_token_w += p.numel()
            elif name == 'head.bias' or in_block_matmul or name.endswith(('q_bias', 'v_bias')):
                per_token_b += p.numel()
        return per_token_w, per_token_b, per_seq

    def train_flops_per_sample(self):
        """Forward + backward FLOPs of one teacher-forced sequence: 6 x matmul weights x tokens, AdaLN once,
        and QK^T + AV over the full N x N (the causal half is not subtracted), for MFU."""
        cfg = self.cfg
        w, _, ada = self.matmul_param_counts()
        return 6 * (w * cfg.n_tokens + ada) + 12 * cfg.depth * cfg.width * cfg.n_tokens ** 2

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def no_weight_decay(self):
        """Names of the multi-dimensional parameters to keep out of weight decay, for common.adamw (which
        leaves out the 1-D ones, the biases, itself): the position embeddings and the per-head attention
        scales, shaped (1, heads, 1, 1)."""
        return {name for name, _ in self.named_parameters() if name == 'pos_emb' or name.endswith('.log_scale')}

    def _head(self, x, head_modulation):
        scale, shift = head_modulation
        return self.head(self.head_norm(x) * (1 + scale) + shift).float()

    def _head_modulation(self, cond):
        return self.head_ada_lin(cond).view(-1, 1, 2, self.cfg.width).unbind(2)

    def forward(self, idx, labels, with_loss=False):
        """Teacher forcing. idx (B, n <= N) token ids, labels (B,) with num_classes = null class.
        Returns float32 logits (B, n, K); logits[:, i] predicts idx[:, i] from idx[:, :i] (with P tokens per step:
        from the groups before i's, idx[:, :i // P * P]). with_loss: also the cross-entropy of each position
        (B, n), computed here so that a compiled model fuses it with the head (train_gen.py; 2 ms of a 62 ms d16
        step when done outside)."""
        n, P = idx.shape[1], self.cfg.tokens_per_step
        assert 1 <= n <= self.cfg.n_tokens, f'sequence length {n} outside 1..{self.cfg.n_tokens}'
        cond = self.class_emb(labels)
        # The P slots of group g take the P tokens of group g - 1 (the class in group 0), each with the position
        # of the token the slot predicts, as VAR's next scale takes the previous scale's tokens as its inputs:
        # - the N slots hold exactly what the groups are conditioned on (the class and tokens 1..N-P), with no
        #   learned query slots, which would carry nothing and need the tokens in slots of their own (2N);
        # - block-causal attention lets every slot of group g see all of group g - 1, whichever token it holds;
        # - a sampling step feeds the P tokens it just drew as the next P slots: one static-shape pass per step;
        # - P = 1 is the next-token layout itself: no new parameters, the same logits and checkpoints.
        x = torch.cat((cond[:, None].expand(-1, min(P, n), -1), self.tok_emb(idx[:, :max(n - P, 0)])), dim=1)
        x = x + self.pos_emb[:, :n]
        visible = None if P == 1 else self.block_causal[:n, :n]
        for block in self.blocks:
            x = block(x, block.modulation(cond), visible=visible)
        logits = self._head(x, self._head_modulation(cond))
        if not with_loss:
            return logits
        return logits, F.cross_entropy(logits.transpose(1, 2), idx, reduction='none')

    def cfg_schedule(self, cfg_scale, cfg_ramp=False):
        """Per-position guidance scales (N,) or None when guidance is off. cfg_scale: float or a
        tensor (N,); cfg_ramp ramps the float linearly from 0 at position 0 to cfg_scale at N-1,
        as VAR ramps its guidance over scales."""
        N = self.cfg.n_tokens
        if torch.is_tensor(cfg_scale):
            assert cfg_scale.shape == (N,), f'cfg schedule must have shape ({N},)'
            return cfg_scale.to(device=self.pos_emb.device, dtype=torch.float32)
        if cfg_scale == 0.0:
            return None
        ramp = self.slot_ids / max(N - 1, 1) if cfg_ramp else torch.ones(N, device=self.slot_ids.device)
        return cfg_scale * ramp.float()

    @torch.no_grad()
    def generate(self, labels, cfg_scale=0.0, cfg_ramp=False, temperature=1.0, top_k=0, top_p=0.0,
                 generator=None, prefix=None, n_steps=None, return_logits=False, fast=False, compile=False):
        """Sample tokens with a KV cache. labels (B,); prefix (B, k) tokens to continue (default none);
        n_steps tokens to add (default N - k; fewer gives a truncated, coarse sequence).
        Returns tokens (B, k + n_steps), and with return_logits also the guided float32 logits
        (B, n_steps, K) each new token was sampled from (before temperature / top-k / top-p).
        With tokens_per_step P each step samples a whole group of P tokens (N / P steps for a full sequence):
        the first pass takes the class and the prefix's complete groups; a group that the prefix fills in part
        is sampled whole and the prefix's tokens then replace the sampled ones (the model draws the tokens of a
        group independently, so this is sampling the rest of the group given the earlier groups); a last group
        past k + n_steps is sampled whole and cut.
        fast=True runs the same sampling through a cached FastSampler (static shapes, CUDA graphs on a
        GPU; see its docstring), with compile=True also torch.compile'd; it takes no prefix. This method stays
        the readable reference."""
        if fast:
            if prefix is not None:
                raise ValueError('generate(fast=True) takes no prefix: use fast=False to continue a prefix')
            return self._fast_sampler(len(labels), cfg_scale, temperature, top_k, top_p, return_logits, compile).generate(
                labels, cfg_scale, cfg_ramp, generator, n_steps)
        B, N, P = labels.shape[0], self.cfg.n_tokens, self.cfg.tokens_per_step
        n_prefix = 0 if prefix is None else prefix.shape[1]
        n_steps = N - n_prefix if n_steps is None else n_steps
        total = n_prefix + n_steps
        assert 0 <= n_steps and total <= N, f'{n_prefix} + {n_steps} tokens exceed N={N}'
        guidance = self.cfg_schedule(cfg_scale, cfg_ramp)
        if guidance is not None:  # second half of the batch: the unconditional branch
            labels = torch.cat((labels, torch.full_like(labels, self.cfg.num_classes)))
        # the class-conditioned AdaLN terms are the same at every step: compute them once
        cond = self.class_emb(labels)
        modulations = [block.modulation(cond) for block in self.blocks]
        head_modulation = self._head_modulation(cond)
        device = cond.device
        cache_dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else cond.dtype
        head_dim = self.cfg.width // self.cfg.heads
        kv_cache = torch.zeros(len(self.blocks), 2, len(labels), self.cfg.heads, N, head_dim, device=device, dtype=cache_dtype)

        tokens = torch.empty(B, -(-total // P) * P, dtype=torch.long, device=device)  # whole groups, cut at the end
        step_logits = torch.empty(B, n_steps, self.cfg.vocab_size, device=device)
        if n_prefix > 0:
            tokens[:, :n_prefix] = prefix
        start = n_prefix // P * P  # first token of the group holding token n_prefix, the first one to sample
        x = cond[:, None].expand(-1, P, -1)  # first pass: the class and the prefix's complete groups at once
        if start > 0:
            x = torch.cat((x, self.tok_emb(prefix[:, :start].repeat(len(labels) // B, 1))), dim=1)
        positions = self.slot_ids[:start + P]
        for group_start in range(start, total, P) if n_steps > 0 else ():  # later steps: P slots, static shapes
            h = x + self.pos_emb[0, positions]
            for block, kv, modulation in zip(self.blocks, kv_cache, modulations):
                h = block(h, modulation, kv, positions, self.block_causal[positions])
            logits = self._head(h[:, -P:], head_modulation)  # (rows, P, K): the group's tokens
            if guidance is not None:
                s = guidance[group_start:group_start + P, None]
                logits = (1 + s) * logits[:B] - s * logits[B:]
            forced = max(n_prefix - group_start, 0)  # the group's first `forced` tokens are the prefix's
            new = min(total - group_start, P) - forced
            step_logits[:, group_start + forced - n_prefix:][:, :new] = logits[:, forced:forced + new]
            sampled = sample_from_logits(logits, temperature, top_k, top_p, generator)
            tokens[:, group_start + forced:group_start + P] = sampled[:, forced:]
            x = self.tok_emb(tokens[:, group_start:group_start + P].repeat(len(labels) // B, 1))
            positions = positions[-P:] + P
        tokens = tokens[:, :total]
        return (tokens, step_logits) if return_logits else tokens

    def _fast_sampler(self, batch_size, cfg_scale, temperature, top_k, top_p, return_logits, compile=False):
        """The FastSampler for these settings, built (and its graphs captured) once and then reused."""
        device = self.pos_emb.device
        autocast = torch.is_autocast_enabled(device.type)
        dtype = torch.get_autocast_dtype(device.type) if autocast else self.pos_emb.dtype
        guided = torch.is_tensor(cfg_scale) or cfg_scale != 0.0  # as cfg_schedule decides
        key = _sampler_key(device, dtype, batch_size, guided, temperature, top_k, top_p, return_logits, compile)
        sampler = _FAST_SAMPLERS.get(self)
        if sampler is None or sampler.key != key:
            _FAST_SAMPLERS.pop(self, None)  # free the old one's buffers and graphs first
            sampler = FastSampler(self, batch_size, guided, temperature, top_k, top_p, return_logits, dtype,
                                  compile=compile)
            _FAST_SAMPLERS[self] = sampler
        return sampler


# ----------------------------------------------------------------------------- fast sampling
# The block math of GPT.generate for one step (P new slots per row), as functions of plain tensors so that
# FastSampler can run them on its own weight copies and optionally torch.compile them (one compile
# serves every layer and step: the shapes never change). x is the float32 residual stream (R, P, C), as
# under autocast; matmuls run in the weights' dtype; the modulation terms hold 1 + scale, not scale.
# The cuts between the functions are where fusion stops anyway (the GEMMs, the attention kernel), except
# one: a block's gated MLP residual is added at the start of the next function (`pending`), so that it
# fuses with the next LayerNorm into one kernel instead of two (one per layer and step).

def _adaln_norm(x, scale1p, shift, eps, dtype):
    """LayerNorm(x) * (1 + scale) + shift in float32, cast to the next matmul's dtype."""
    return torch.addcmul(shift, F.layer_norm(x, x.shape[-1:], eps=eps), scale1p).to(dtype)


def _attn_in(x, pending, scale1p, shift, qkv_w, qkv_b, eps):
    """x plus the previous block's MLP residual `pending` ((output, gate), or None in the first block), then the
    qkv projection of the new slots -> (x, qkv (R, P, 3C)); the attention functions normalise q and k."""
    if pending is not None:
        x = torch.addcmul(x, *pending)
    return x, F.linear(_adaln_norm(x, scale1p, shift, eps, qkv_w.dtype), qkv_w, qkv_b)


def _attn_out_mlp(x, att, gate1, scale2p, shift2, proj_w, proj_b, fc1_w, fc1_b, fc2_w, fc2_b, eps):
    """x + proj(att) * gate1, then the MLP on it -> (x, MLP output); its gated residual is left pending. att (R, P, C)."""
    x = torch.addcmul(x, F.linear(att, proj_w, proj_b), gate1)
    h = _adaln_norm(x, scale2p, shift2, eps, fc1_w.dtype)
    if h.is_cuda:  # cuBLASLt's bias + GELU(tanh) epilogue: 10.7 us, GEMM then GELU kernel 13.5 (H100, 512 rows)
        h = torch._addmm_activation(fc1_b, h.flatten(0, -2), fc1_w.t(), use_gelu=True).view(*h.shape[:-1], -1)
    else:  # the CPU's _addmm_activation uses the exact GELU, not the model's tanh form
        h = F.gelu(F.linear(h, fc1_w, fc1_b), approximate='tanh')
    return x, F.linear(h, fc2_w, fc2_b)


def _head_logits(x, pending, scale1p, shift, head_w, head_b, eps, cond_weight=None, uncond_weight=None):
    """float32 logits (R, P, K); with guidance, the weights (1 + s) and s of the P positions as (P, 1) tensors, the
    guided logits (1 + s) * cond - s * uncond of the R / 2 conditional rows (the second half is the null class)."""
    x = torch.addcmul(x, *pending)
    logits = F.linear(_adaln_norm(x, scale1p, shift, eps, head_w.dtype), head_w, head_b).float()
    if cond_weight is None:
        return logits
    B = logits.shape[0] // 2
    return cond_weight * logits[:B] - uncond_weight * logits[B:]


def decode_attention(q, k, v, k_cache, v_cache, t, q_scale):
    """One sampling step of VAR's attention for one new token per row: q and k l2-normalised, q times its
    head's scale q_scale (H,) float32 (the softmax scale is then 1), the new key/value written to cache
    position t, and q attended over positions 0..t. q, k, v (R, H, D) as the qkv projection gives them,
    caches (R, H, N, D) holding normalised keys. Returns (R, H, D).
    On CUDA with Triton (and a power-of-two head size) this is one kernel that also does the normalisation
    and reads only the t cached positions: 6-50 us per call for d16 at batch 256 with CFG, against 49-180 us
    for cuDNN's SDPA, the best of torch's kernels at query length 1 (docs/performance.md)."""
    if not 0 <= t < k_cache.shape[2]:
        raise IndexError(f'decode_attention: position {t} outside the cache of {k_cache.shape[2]}')
    D = q.shape[-1]
    if triton is not None and q.is_cuda and D & (D - 1) == 0:
        return _decode_attention_triton(q, k, v, k_cache, v_cache, t, q_scale)
    return group_attention(q[:, None], k[:, None], v[:, None], k_cache, v_cache, t, q_scale)[:, 0]


def group_attention(q, k, v, k_cache, v_cache, start, q_scale):
    """One sampling step of VAR's attention for P new slots per row (tokens_per_step = P): q and k l2-normalised,
    q times q_scale (H,), the P new keys/values written to cache positions start..start+P-1, and every new slot
    attending to positions 0..start+P-1: block-causal attention needs no mask in a step, as a group's slots all
    see each other and everything before. q, k, v (R, P, H, D); caches (R, H, N, D). Returns (R, P, H, D).
    torch's SDPA over the cache slice (on CUDA too: the Triton kernel takes one query per row)."""
    end = start + q.shape[1]
    if end > k_cache.shape[2]:
        raise IndexError(f'group_attention: positions {start}..{end - 1} outside the cache of {k_cache.shape[2]}')
    q = (F.normalize(q.float(), dim=-1) * q_scale[:, None]).to(k_cache.dtype).transpose(1, 2)
    k_cache[:, :, start:end].copy_(F.normalize(k.float(), dim=-1).transpose(1, 2))
    v_cache[:, :, start:end].copy_(v.transpose(1, 2))
    return F.scaled_dot_product_attention(q, k_cache[:, :, :end], v_cache[:, :, :end], scale=1.0).transpose(1, 2)


if triton is not None:
    @triton.jit
    def _decode_attention_kernel(q, k, v, k_cache, v_cache, out, q_scale, t, q_row, k_row, v_row, cache_row,
                                 cache_head, H: tl.constexpr, D: tl.constexpr, BLOCK_N: tl.constexpr):
        """One program per (row, head): q and the new k normalised (and rounded to the cache dtype, as the
        reference loop's are), then an online softmax over the t cached positions in chunks of BLOCK_N
        (a loop bounded by t: no reads past it, and few registers per chunk, so many programs per SM),
        started from the new position's score and value."""
        row, head = tl.program_id(0), tl.program_id(1)
        d = tl.arange(0, D)
        q_vec = tl.load(q + row * q_row + head * D + d).to(tl.float32)
        q_vec = q_vec / tl.maximum(tl.sqrt(tl.sum(q_vec * q_vec, axis=0)), 1e-12) * tl.load(q_scale + head)
        q_vec = q_vec.to(k_cache.dtype.element_ty).to(tl.float32)
        k_new = tl.load(k + row * k_row + head * D + d).to(tl.float32)
        k_new = (k_new / tl.maximum(tl.sqrt(tl.sum(k_new * k_new, axis=0)), 1e-12)).to(k_cache.dtype.element_ty)
        v_new = tl.load(v + row * v_row + head * D + d)
        top = tl.sum(k_new.to(tl.float32) * q_vec, axis=0)  # running max of the scores
        mass = tl.full((), 1.0, tl.float32)  # running sum of exp(score - top)
        mixed = v_new.to(tl.float32)  # running sum of exp(score - top) * value
        base = row * cache_row + head * cache_head
        for start in range(0, t, BLOCK_N):
            positions = start + tl.arange(0, BLOCK_N)
            cached = positions < t
            offsets = base + positions[:, None] * D + d[None, :]
            keys = tl.load(k_cache + offsets, mask=cached[:, None], other=0.0).to(tl.float32)
            scores = tl.where(cached, tl.sum(keys * q_vec[None, :], axis=1), float('-inf'))
            new_top = tl.maximum(top, tl.max(scores, axis=0))
            shrink, p = tl.exp(top - new_top), tl.exp(scores - new_top)
            values = tl.load(v_cache + offsets, mask=cached[:, None], other=0.0).to(tl.float32)
            mass = mass * shrink + tl.sum(p, axis=0)
            mixed = mixed * shrink + tl.sum(p[:, None] * values, axis=0)
            top = new_top
        tl.store(out + (row * H + head) * D + d, (mixed / mass).to(out.dtype.element_ty))
        tl.store(k_cache + base + t * D + d, k_new)
        tl.store(v_cache + base + t * D + d, v_new.to(v_cache.dtype.element_ty))


def _decode_attention_triton(q, k, v, k_cache, v_cache, t, q_scale):
    R, H, D = q.shape
    for name, x in (('q', q), ('k', k), ('v', v)):
        if x.stride(2) != 1 or x.stride(1) != D:
            raise ValueError(f'decode_attention: {name} must have contiguous heads, got strides {x.stride()}')
    if k_cache.stride() != v_cache.stride() or k_cache.stride()[2:] != (D, 1):
        raise ValueError(f'decode_attention: caches need (N, D) contiguous per head, got {k_cache.stride()}')
    out = torch.empty(R, H, D, device=q.device, dtype=q.dtype)
    _decode_attention_kernel[(R, H)](q, k, v, k_cache, v_cache, out, q_scale, t, q.stride(0), k.stride(0), v.stride(0),
                                     k_cache.stride(0), k_cache.stride(1), H=H, D=D, BLOCK_N=16, num_warps=1)
    return out


_FAST_SAMPLERS = weakref.WeakKeyDictionary()  # GPT -> the FastSampler that generate(fast=True) last used


def _sampler_key(device, dtype, batch_size, guided, temperature, top_k, top_p, return_logits, compile):
    """What a FastSampler is built for: generate(fast=True) reuses the cached one only when this matches."""
    return (device, dtype, batch_size, guided, float(temperature), int(top_k), float(top_p), bool(return_logits),
            bool(compile))


class FastSampler:
    """
    GPT.generate's sampling with everything static, for one batch size and one set of sampling settings:
      - weights: its own copies, matmul weights in `dtype` (bf16 on a GPU: no per-step casts), embeddings
        float32; refreshed from the model whenever a parameter changed (data pointer or version counter);
      - buffers allocated once: the KV cache (depth, 2, R, H, N, D) with R = 2B with guidance (second
        half: the null class) else B, the tokens (B, N), the AdaLN terms (computed once per sequence, in
        step 0), the guidance schedule, the Exp(1) noise (B, P, K) of the sampler;
      - step g (tokens gP..gP+P-1; P = tokens_per_step, 1 for next-token models) is a fixed program: the
        embeddings of group g - 1's tokens, every block attending to exactly the (g + 1)P cached positions
        (P = 1: decode_attention, no mask, no reads of empty slots; P > 1: group_attention), head, guidance,
        top-k / top-p and the exponential race on the GPU, the group's tokens written into the token buffer.
        No host sync anywhere.
      - on CUDA (cuda_graphs=True) each step is captured once as a CUDA graph (N / P graphs sharing one
        memory pool, replayed in order); elsewhere the same step functions run eagerly;
      - compile=True: the per-block math (_attn_in, _attn_out_mlp), the head with guidance (_head_logits)
        and the sampling (sample_with_race) go through torch.compile(fullgraph=True, dynamic=False), fusing
        the small elementwise kernels.
    Random numbers: before step g the noise buffer is refilled with race.exponential_(generator) outside
    the graph, the very call (shape, dtype, order) GPT.generate makes at step g, so with the same
    generator state both paths consume the same random stream: the same seed gives the same samples,
    and the fast path's tokens equal the reference's wherever their logits agree to rounding (always in
    float32 on the CPU; in bf16 on a GPU, rounding differences flip some near-tied choices, after which
    the sequences diverge). Greedy (top_k=1) draws the noise too, to keep the generator in step.
    """

    def __init__(self, model, batch_size, guided=True, temperature=1.0, top_k=0, top_p=0.0, return_logits=False,
                 dtype=None, cuda_graphs=True, compile=False):
        cfg = model.cfg
        self.device = model.pos_emb.device
        self.dtype = dtype or (torch.bfloat16 if self.device.type == 'cuda' else model.pos_emb.dtype)
        self.key = _sampler_key(self.device, self.dtype, batch_size, guided, temperature, top_k, top_p, return_logits,
                                compile)
        self.B, self.R, self.guided = batch_size, batch_size * (2 if guided else 1), guided
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.N, self.K, self.C, self.H = cfg.n_tokens, cfg.vocab_size, cfg.width, cfg.heads
        self.P, self.n_groups = cfg.tokens_per_step, cfg.n_tokens // cfg.tokens_per_step
        self.depth, self.num_classes, self.eps = cfg.depth, cfg.num_classes, cfg.norm_eps
        self.use_graphs = cuda_graphs and self.device.type == 'cuda'
        wrap = (lambda f: torch.compile(f, fullgraph=True, dynamic=False)) if compile else (lambda f: f)
        self._attn_in, self._attn_out_mlp, self._head_logits = wrap(_attn_in), wrap(_attn_out_mlp), wrap(_head_logits)
        self._sample = wrap(sample_with_race)
        self.model_ref = weakref.ref(model)  # weak: a cached sampler must not keep its model alive

        C, H, N, R, B = self.C, self.H, self.N, self.R, self.B
        hidden = model.blocks[0].mlp[0].out_features
        lp = dict(device=self.device, dtype=self.dtype)
        f32 = dict(device=self.device, dtype=torch.float32)

        def block_weights():
            return dict(qkv_w=torch.empty(3 * C, C, **lp), qkv_b=torch.empty(3 * C, **lp),
                        q_scale=torch.ones(H, **f32), proj_w=torch.empty(C, C, **lp), proj_b=torch.empty(C, **lp),
                        fc1_w=torch.empty(hidden, C, **lp), fc1_b=torch.empty(hidden, **lp),
                        fc2_w=torch.empty(C, hidden, **lp), fc2_b=torch.empty(C, **lp),
                        ada_w=torch.empty(6 * C, C, **lp), ada_b=torch.empty(6 * C, **lp))
        self.w = dict(class_emb=torch.empty(self.num_classes + 1, C, **f32), tok_emb=torch.empty(self.K, C, **f32),
                      pos=torch.empty(N, C, **f32), blocks=[block_weights() for _ in range(self.depth)],
                      head_ada_w=torch.empty(2 * C, C, **lp), head_ada_b=torch.empty(2 * C, **lp),
                      head_w=torch.empty(self.K, C, **lp), head_b=torch.empty(self.K, **lp))
        self._weights_key = None

        self.labels = torch.full((R,), self.num_classes, dtype=torch.long, device=self.device)
        self.guidance = torch.zeros(N, **f32)
        self.guidance1p = torch.ones(N, **f32)
        self.mods = [torch.zeros(R, 6 * C, **lp) for _ in range(self.depth)]
        self.head_mods = torch.zeros(R, 2 * C, **lp)
        self.kv = torch.zeros(self.depth, 2, R, H, N, C // H, **lp)
        self.tokens = torch.zeros(B, N, dtype=torch.long, device=self.device)
        self.race = torch.ones(B, self.P, self.K, **f32)
        self.logits = torch.zeros(B, N, self.K, **f32) if return_logits else None
        self.graphs = None

    @torch.no_grad()
    def load_weights(self, model=None):
        """Copy (and cast) the model's weights into the sampler's own buffers, in place: graphs stay valid."""
        model = model or self.model_ref()
        C, w = self.C, self.w
        w['class_emb'].copy_(model.class_emb.weight)
        w['tok_emb'].copy_(model.tok_emb.weight)
        w['pos'].copy_(model.pos_emb[0])
        for bw, block in zip(w['blocks'], model.blocks):
            attn = block.attn
            bw['qkv_w'].copy_(attn.qkv.weight)
            bw['qkv_b'].copy_(torch.cat((attn.q_bias, attn.zero_k_bias, attn.v_bias)))
            # rounded to the matmul dtype first, as SelfAttention's scale is under autocast
            bw['q_scale'].copy_(attn.log_scale.clamp(max=MAX_LOG_ATTN_SCALE).exp().view(self.H).to(self.dtype))
            bw['proj_w'].copy_(attn.proj.weight)
            bw['proj_b'].copy_(attn.proj.bias)
            bw['fc1_w'].copy_(block.mlp[0].weight)
            bw['fc1_b'].copy_(block.mlp[0].bias)
            bw['fc2_w'].copy_(block.mlp[2].weight)
            bw['fc2_b'].copy_(block.mlp[2].bias)
            bw['ada_w'].copy_(block.ada_lin[-1].weight)
            ada_b = block.ada_lin[-1].bias.float().clone()
            ada_b[2 * C:4 * C] += 1  # (gate1, gate2, scale1, scale2, shift1, shift2): hold 1 + scale
            bw['ada_b'].copy_(ada_b)
        w['head_ada_w'].copy_(model.head_ada_lin[-1].weight)
        head_ada_b = model.head_ada_lin[-1].bias.float().clone()
        head_ada_b[:C] += 1  # (scale, shift)
        w['head_ada_b'].copy_(head_ada_b)
        w['head_w'].copy_(model.head.weight)
        w['head_b'].copy_(model.head.bias)

    def _sync_weights(self, model):
        try:
            key = tuple((p.data_ptr(), p._version) for p in model.parameters())
        except RuntimeError:  # e.g. inference-mode tensors have no version counter: always copy
            key = None
        if key is None or key != self._weights_key:
            self.load_weights(model)
            self._weights_key = key

    def _step(self, g):
        """The P tokens of group g for every row, from group g - 1's (the class at g = 0) and the cached keys/values.
        The residual stream is (R, P, C); the per-sequence modulation terms broadcast over the P slots."""
        B, R, C, P, w = self.B, self.R, self.C, self.P, self.w
        start = g * P
        if g == 0:  # the class-conditioned AdaLN terms, once per sequence
            cond = F.embedding(self.labels, w['class_emb'])
            c = F.silu(cond).to(self.dtype)
            for bw, mods in zip(w['blocks'], self.mods):
                mods.copy_(F.linear(c, bw['ada_w'], bw['ada_b']))
            self.head_mods.copy_(F.linear(c, w['head_ada_w'], w['head_ada_b']))
            x = cond[:, None] + w['pos'][:P]
        else:
            x = F.embedding(self.tokens[:, start - P:start].repeat(R // B, 1), w['tok_emb']) + w['pos'][start:start + P]
        pending = None  # each block's gated MLP residual, added by the next function (see _attn_in)
        for bw, mods, cache in zip(w['blocks'], self.mods, self.kv):
            gate1, gate2, scale1p, scale2p, shift1, shift2 = mods.view(R, 1, 6, C).unbind(2)
            x, qkv = self._attn_in(x, pending, scale1p, shift1, bw['qkv_w'], bw['qkv_b'], self.eps)
            q, k, v = qkv.view(R, P, 3, self.H, C // self.H).unbind(2)
            if P == 1:
                att = decode_attention(q[:, 0], k[:, 0], v[:, 0], cache[0], cache[1], start, bw['q_scale'])
            else:
                att = group_attention(q, k, v, cache[0], cache[1], start, bw['q_scale'])
            x, mlp_out = self._attn_out_mlp(x, att.reshape(R, P, C), gate1, scale2p, shift2, bw['proj_w'],
                                            bw['proj_b'], bw['fc1_w'], bw['fc1_b'], bw['fc2_w'], bw['fc2_b'], self.eps)
            pending = (mlp_out, gate2)
        head_scale1p, head_shift = self.head_mods.view(R, 1, 2, C).unbind(2)
        # the reference's guidance, term for term: weights (P, 1) of the group's positions
        guidance = (self.guidance1p[start:start + P, None], self.guidance[start:start + P, None]) if self.guided else ()
        logits = self._head_logits(x, pending, head_scale1p, head_shift, w['head_w'], w['head_b'], self.eps, *guidance)
        if self.logits is not None:
            self.logits[:, start:start + P].copy_(logits)
        self.tokens[:, start:start + P].copy_(self._sample(logits, self.race, self.temperature, self.top_k, self.top_p))

    def _capture(self):
        """Warm up on a side stream (cuBLAS handles, kernel selection, compilation), then capture each step."""
        current = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            for g in range(self.n_groups):
                self._step(g)
        current.wait_stream(side)
        pool = torch.cuda.graph_pool_handle()
        graphs = []
        for g in range(self.n_groups):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):  # one pool: safe as the graphs always replay in order
                self._step(g)
            graphs.append(graph)
        self.graphs = graphs

    @torch.no_grad()
    def generate(self, labels, cfg_scale=0.0, cfg_ramp=False, generator=None, n_steps=None, events=None):
        """Like GPT.generate without a prefix. labels (B,); cfg_scale / cfg_ramp must agree with `guided`.
        n_steps: tokens to sample (default N), in ceil(n_steps / P) steps of P. events: optional list of
        steps + 1 CUDA timing events, recorded before step 0 and after each step.
        Returns new tensors: tokens (B, n_steps), and with return_logits the guided logits (B, n_steps, K)."""
        model = self.model_ref()
        if model is None:
            raise RuntimeError('the model of this FastSampler no longer exists')
        n_steps = self.N if n_steps is None else n_steps
        if tuple(labels.shape) != (self.B,):
            raise ValueError(f'this FastSampler samples batches of {self.B}, got labels of shape {tuple(labels.shape)}')
        if not 0 <= n_steps <= self.N:
            raise ValueError(f'n_steps={n_steps} outside 0..{self.N}')
        guidance = model.cfg_schedule(cfg_scale, cfg_ramp)
        if (guidance is not None) != self.guided:
            raise ValueError(f'this FastSampler was built with guided={self.guided} but cfg_scale={cfg_scale} '
                             f'{"turns guidance off" if guidance is None else "asks for guidance"}')
        # every batch size and sampling setting is a static specialisation of the same compiled functions, and with
        # fullgraph=True dynamo's default limit of 8 per function would stop the 5th batch size with an error
        compile_limits = torch._dynamo.config.patch(recompile_limit=max(torch._dynamo.config.recompile_limit, 64))
        with torch.autocast(self.device.type, enabled=False), compile_limits:
            self._sync_weights(model)
            self.labels[:self.B].copy_(labels)
            if guidance is not None:
                self.guidance.copy_(guidance)
                self.guidance1p.copy_(1 + guidance)
            if self.use_graphs and self.graphs is None:
                self._capture()
            if events:
                events[0].record()
            for g in range(-(-n_steps // self.P)):
                self.race.exponential_(generator=generator)  # GPT.generate's draw at step g, outside the graph
                if self.graphs is not None:
                    self.graphs[g].replay()
                else:
                    self._step(g)
                if events:
                    events[g + 1].record()
        tokens = self.tokens[:, :n_steps].clone()
        return (tokens, self.logits[:, :n_steps].clone()) if self.logits is not None else tokens

    __call__ = generate


if __name__ == '__main__':
    for name, paper in PAPER_PARAMS.items():
        with torch.device('meta'):
            count = GPT(GPTConfig.preset(name)).num_params()
        print(f'{name}: {count / 1e6:.1f}M params, paper {paper / 1e6:.0f}M ({count / paper - 1:+.1%})')
