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

Sampling: GPT.generate is the readable reference loop. fast_sample.py (beside this file, which never imports it)
runs the same computation with static shapes, weights pre-cast to bf16, one CUDA graph per token step and a
Triton attention kernel, and draws the same random numbers; it refuses a model whose blocks differ from the
ones it mirrors (bench.py sample times both against the hardware floor).
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

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
    def __init__(self, config, drop_path_rate):
        super().__init__()
        self.width, self.drop_path_rate = config.width, drop_path_rate
        self.norm = nn.LayerNorm(config.width, eps=config.norm_eps, elementwise_affine=False)
        self.attn = SelfAttention(config.width, config.heads, config.dropout)
        hidden = round(config.width * config.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(config.width, hidden), nn.GELU(approximate='tanh'), nn.Linear(hidden, config.width))
        self.residual_dropout = nn.Dropout(config.dropout)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(config.width, 6 * config.width))

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
    def __init__(self, config):
        super().__init__()
        self.config = config
        C = config.width
        self.class_emb = nn.Embedding(config.num_classes + 1, C)  # last row: null class, also the sos
        self.tok_emb = nn.Embedding(config.vocab_size, C)
        self.pos_emb = nn.Parameter(torch.empty(1, config.n_tokens, C))
        # python floats, not torch.linspace, so the model can be built on the meta device
        rates = [config.drop_path * i / max(config.depth - 1, 1) for i in range(config.depth)]
        self.blocks = nn.ModuleList(Block(config, rate) for rate in rates)
        self.head_norm = nn.LayerNorm(C, eps=config.norm_eps, elementwise_affine=False)
        self.head_ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 2 * C))  # VAR's AdaLNBeforeHead
        self.head = nn.Linear(C, config.vocab_size)
        P = config.tokens_per_step
        if P < 1 or config.n_tokens % P:
            divisors = [d for d in range(1, config.n_tokens + 1) if config.n_tokens % d == 0]
            raise ValueError(f'tokens_per_step={P} must divide n_tokens={config.n_tokens}: use one of {divisors}')
        self.register_buffer('slot_ids', torch.arange(config.n_tokens), persistent=False)
        # block_causal[i, j]: slot i may attend to slot j, i.e. j's group is not later than i's (P = 1: causal)
        group = self.slot_ids // P
        self.register_buffer('block_causal', group[None, :] <= group[:, None], persistent=False)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self):
        # VAR's init_weights with its training defaults (init_std=-1 -> sqrt(1 / width / 3))
        config, std = self.config, math.sqrt(1 / self.config.width / 3)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.trunc_normal_(m.weight, std=std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                m.bias.zero_()
        nn.init.trunc_normal_(self.pos_emb, std=std)
        self.head.weight.mul_(config.init_head)
        self.head_ada_lin[-1].weight.mul_(config.init_adaln)
        for block in self.blocks:
            # residual projections shrink with depth so the residual stream keeps its scale
            block.attn.proj.weight.div_(math.sqrt(2 * config.depth))
            block.mlp[-1].weight.div_(math.sqrt(2 * config.depth))
            ada_weight = block.ada_lin[-1].weight
            ada_weight[2 * config.width:].mul_(config.init_adaln)
            ada_weight[:2 * config.width].mul_(config.init_adaln_gamma)  # gates start near 0: blocks ~identity

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
        config = self.config
        w, _, ada = self.matmul_param_counts()
        return 6 * (w * config.n_tokens + ada) + 12 * config.depth * config.width * config.n_tokens ** 2

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
        return self.head_ada_lin(cond).view(-1, 1, 2, self.config.width).unbind(2)

    def forward(self, idx, labels, with_loss=False):
        """Teacher forcing. idx (B, n <= N) token ids, labels (B,) with num_classes = null class.
        Returns float32 logits (B, n, K); logits[:, i] predicts idx[:, i] from idx[:, :i] (with P tokens per step:
        from the groups before i's, idx[:, :i // P * P]). with_loss: also the cross-entropy of each position
        (B, n), computed here so that a compiled model fuses it with the head (train_gen.py: outside the
        model it would cost 3% of a d16 step)."""
        n, P = idx.shape[1], self.config.tokens_per_step
        assert 1 <= n <= self.config.n_tokens, f'sequence length {n} outside 1..{self.config.n_tokens}'
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
        N = self.config.n_tokens
        if torch.is_tensor(cfg_scale):
            assert cfg_scale.shape == (N,), f'cfg schedule must have shape ({N},)'
            return cfg_scale.to(device=self.pos_emb.device, dtype=torch.float32)
        if cfg_scale == 0.0:
            return None
        ramp = self.slot_ids / max(N - 1, 1) if cfg_ramp else torch.ones(N, device=self.slot_ids.device)
        return cfg_scale * ramp.float()

    @torch.no_grad()
    def generate(self, labels, cfg_scale=0.0, cfg_ramp=False, temperature=1.0, top_k=0, top_p=0.0,
                 generator=None, prefix=None, n_steps=None, return_logits=False):
        """Sample tokens with a KV cache. labels (B,); prefix (B, k) tokens to continue (default none);
        n_steps tokens to add (default N - k; fewer gives a truncated, coarse sequence).
        Returns tokens (B, k + n_steps), and with return_logits also the guided float32 logits
        (B, n_steps, K) each new token was sampled from (before temperature / top-k / top-p).
        With tokens_per_step P each step samples a whole group of P tokens (N / P steps for a full sequence):
        the first pass takes the class and the prefix's complete groups; a group that the prefix fills in part
        is sampled whole and the prefix's tokens then replace the sampled ones (the model draws the tokens of a
        group independently, so this is sampling the rest of the group given the earlier groups); a last group
        past k + n_steps is sampled whole and cut.
        This is the readable reference; fast_sample.generate(model, ...) samples the same tokens from the same
        random numbers, faster."""
        B, N, P = labels.shape[0], self.config.n_tokens, self.config.tokens_per_step
        n_prefix = 0 if prefix is None else prefix.shape[1]
        n_steps = N - n_prefix if n_steps is None else n_steps
        total = n_prefix + n_steps
        assert 0 <= n_steps and total <= N, f'{n_prefix} + {n_steps} tokens exceed N={N}'
        guidance = self.cfg_schedule(cfg_scale, cfg_ramp)
        if guidance is not None:  # second half of the batch: the unconditional branch
            labels = torch.cat((labels, torch.full_like(labels, self.config.num_classes)))
        # the class-conditioned AdaLN terms are the same at every step: compute them once
        cond = self.class_emb(labels)
        modulations = [block.modulation(cond) for block in self.blocks]
        head_modulation = self._head_modulation(cond)
        device = cond.device
        cache_dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else cond.dtype
        head_dim = self.config.width // self.config.heads
        kv_cache = torch.zeros(len(self.blocks), 2, len(labels), self.config.heads, N, head_dim, device=device, dtype=cache_dtype)

        tokens = torch.empty(B, -(-total // P) * P, dtype=torch.long, device=device)  # whole groups, cut at the end
        step_logits = torch.empty(B, n_steps, self.config.vocab_size, device=device)
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


if __name__ == '__main__':
    for name, paper in PAPER_PARAMS.items():
        with torch.device('meta'):
            count = GPT(GPTConfig.preset(name)).num_params()
        print(f'{name}: {count / 1e6:.1f}M params, paper {paper / 1e6:.0f}M ({count / paper - 1:+.1%})')
