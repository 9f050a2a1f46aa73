"""
Fast sampling for generator.GPT: GPT.generate's computation (without a prefix) with static shapes, for
sample.py, sweep.py and bench.py. generator.py is the model and never imports this file.

    tokens = fast_sample.generate(model, labels, cfg_scale=1.5, generator=g)  # GPT.generate's arguments
    sampler = fast_sample.FastSampler(model, batch_size=256, guided=True)    # one the caller builds and holds

What it adds to the reference loop (FastSampler's docstring has the details): weights pre-cast to the matmul
dtype, the KV cache and every other buffer allocated once, one CUDA graph per token step, a Triton attention
kernel over the cache (decode_attention; group_attention for tokens_per_step > 1) and optionally
torch.compile'd block math. It draws GPT.generate's random numbers, so in float32 it samples GPT.generate's
tokens (tests/test_fast_sample.py). The block math is written here a second time: MIRRORED_FINGERPRINT is the
contract that makes a model whose blocks were edited since fail loudly instead of sampling from the old math.
"""
import ast
import hashlib
import inspect
import textwrap
import weakref

import torch
import torch.nn.functional as F

from generator import MAX_LOG_ATTN_SCALE, sample_with_race

try:  # ships with CUDA builds of torch; decode_attention uses it when present
    import triton
    import triton.language as tl
except ImportError:
    triton = None

# ----------------------------------------------------------------------------- the contract with generator.py
# FastSampler re-implements the math of generator.py's SelfAttention, Block and GPT head, and GPT.generate's loop
# (input layout, guidance, order of the random draws), and reads the parameters by name. A model whose classes
# were edited would otherwise be sampled silently with the old math, so building a sampler compares a
# fingerprint of the methods it mirrors, as the model's own classes define them (a subclass or a swapped-in
# block counts), with the one recorded here when the two were last checked to agree (tests/test_fast_sample.py).
# The fingerprint hashes the methods' syntax trees written back as code (ast.unparse): comments, docstrings,
# blank lines and line wrapping do not change it; any changed statement does, a renamed local too, which is the
# price of catching every change of the math without running the model (a numerical check would need a
# reference pass per sampler and a tolerance that bf16 blurs). Parameter names and shapes alone would miss the
# edits that keep them: another activation, another residual order, another guidance formula.
MIRRORED_METHODS = {'attention': ('__init__', 'forward'), 'block': ('__init__', 'modulation', 'forward'),
                    'model': ('_head', '_head_modulation', 'generate')}
MIRRORED_FINGERPRINT = '102077ae09040405'


def _code_fingerprint(functions):
    """sha256 (16 hex digits) of the functions' code without comments, docstrings or layout."""
    texts = []
    for function in functions:
        tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
        for node in ast.walk(tree):
            body = getattr(node, 'body', None)
            if (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and body
                    and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str)):
                node.body = body[1:] or [ast.Pass()]
        texts.append(ast.unparse(tree))
    return hashlib.sha256('\n'.join(texts).encode()).hexdigest()[:16]


def mirrored_fingerprint(model):
    """The fingerprint of the methods FastSampler mirrors (MIRRORED_METHODS), taken from the classes this model
    uses: its own, its blocks' and their attention's (every block must share one class)."""
    block, attention = type(model.blocks[0]), type(model.blocks[0].attn)
    if any(type(b) is not block or type(b.attn) is not attention for b in model.blocks):
        raise RuntimeError('fast_sample.FastSampler needs every block of the model to be of one class with one '
                           'attention class: sample this model with GPT.generate')
    classes = {'attention': attention, 'block': block, 'model': type(model)}
    return _code_fingerprint([getattr(classes[role], name) for role, names in MIRRORED_METHODS.items()
                              for name in names])


def check_mirrors(model):
    """Refuse a model whose mirrored methods are not those FastSampler was written against, naming the fix."""
    fingerprint = mirrored_fingerprint(model)
    if fingerprint != MIRRORED_FINGERPRINT:
        names = ', '.join(f'{cls.__module__}.{cls.__qualname__}' for cls in
                          (type(model), type(model.blocks[0]), type(model.blocks[0].attn)))
        raise RuntimeError(
            f"fast_sample.FastSampler mirrors the math of generator.py's SelfAttention, Block, GPT head and "
            f"GPT.generate as they were when it was written (fingerprint {MIRRORED_FINGERPRINT}), but the code of "
            f"this model's classes ({names}) differs (fingerprint {fingerprint}). Port the change into fast_sample.py "
            f"(FastSampler.load_weights and _step, _attn_in, _attn_out_mlp, _head_logits), check it with `python -m "
            f"pytest tests/test_fast_sample.py` (fast tokens against GPT.generate's), then set MIRRORED_FINGERPRINT = "
            f"'{fingerprint}' in fast_sample.py. Until then sample with GPT.generate, the reference loop.")


# ----------------------------------------------------------------------------- the step functions
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
    if h.is_cuda:  # cuBLASLt's bias + GELU(tanh) epilogue: a fifth faster than a GEMM and a GELU kernel (H100, 512 rows)
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
    On CUDA with Triton (P and the head size powers of two, P <= 16) one kernel as decode_attention's; else
    torch's SDPA over the cache slice (d16-p4 at batch 256 with CFG on an H200: the generator 101.3 ms per batch
    with SDPA, 95.8 ms with the kernel; docs/performance.md)."""
    P, D = q.shape[1], q.shape[-1]
    end = start + P
    if end > k_cache.shape[2]:
        raise IndexError(f'group_attention: positions {start}..{end - 1} outside the cache of {k_cache.shape[2]}')
    if triton is not None and q.is_cuda and D & (D - 1) == 0 and P & (P - 1) == 0 and P <= 16:
        return _group_attention_triton(q, k, v, k_cache, v_cache, start, q_scale)
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


    @triton.jit
    def _group_attention_kernel(q, k, v, k_cache, v_cache, out, q_scale, start, q_row, q_slot, k_row, k_slot, v_row,
                                v_slot, out_row, out_slot, cache_row, cache_head, D: tl.constexpr, P: tl.constexpr,
                                BLOCK_N: tl.constexpr):
        """_decode_attention_kernel for the P new slots of a group, one program per (row, head): the P queries
        and new keys normalised and rounded as there, the online softmax of every slot started from its scores
        against all P new keys (a group's slots see each other), then the start cached positions in chunks of
        BLOCK_N as (P, BLOCK_N) scores; the new keys and values are stored last."""
        row, head = tl.program_id(0), tl.program_id(1)
        slots, d = tl.arange(0, P), tl.arange(0, D)
        queries = tl.load(q + row * q_row + slots[:, None] * q_slot + head * D + d[None, :]).to(tl.float32)
        norms = tl.maximum(tl.sqrt(tl.sum(queries * queries, axis=1)), 1e-12)
        queries = queries / norms[:, None] * tl.load(q_scale + head)
        queries = queries.to(k_cache.dtype.element_ty).to(tl.float32)
        k_new = tl.load(k + row * k_row + slots[:, None] * k_slot + head * D + d[None, :]).to(tl.float32)
        k_new = (k_new / tl.maximum(tl.sqrt(tl.sum(k_new * k_new, axis=1)), 1e-12)[:, None]).to(k_cache.dtype.element_ty)
        v_new = tl.load(v + row * v_row + slots[:, None] * v_slot + head * D + d[None, :])
        scores = tl.sum(queries[:, None, :] * k_new.to(tl.float32)[None, :, :], axis=2)  # (P slots, P new keys)
        top = tl.max(scores, axis=1)  # running max of each slot's scores
        weights = tl.exp(scores - top[:, None])
        mass = tl.sum(weights, axis=1)  # running sum of exp(score - top)
        mixed = tl.sum(weights[:, :, None] * v_new.to(tl.float32)[None, :, :], axis=1)  # (P, D)
        base = row * cache_row + head * cache_head
        for first in range(0, start, BLOCK_N):
            positions = first + tl.arange(0, BLOCK_N)
            cached = positions < start
            offsets = base + positions[:, None] * D + d[None, :]
            keys = tl.load(k_cache + offsets, mask=cached[:, None], other=0.0).to(tl.float32)
            # the (P, BLOCK_N) block has its own names: Triton's compiler (not its interpreter) rejects a variable
            # carried through the loop with a changing shape, as the (P, P) scores / weights above would be
            block_scores = tl.where(cached[None, :], tl.sum(queries[:, None, :] * keys[None, :, :], axis=2),
                                    float('-inf'))
            new_top = tl.maximum(top, tl.max(block_scores, axis=1))
            shrink, block_weights = tl.exp(top - new_top), tl.exp(block_scores - new_top[:, None])
            values = tl.load(v_cache + offsets, mask=cached[:, None], other=0.0).to(tl.float32)
            mass = mass * shrink + tl.sum(block_weights, axis=1)
            mixed = mixed * shrink[:, None] + tl.sum(block_weights[:, :, None] * values[None, :, :], axis=1)
            top = new_top
        tl.store(out + row * out_row + slots[:, None] * out_slot + head * D + d[None, :],
                 (mixed / mass[:, None]).to(out.dtype.element_ty))
        new_offsets = base + (start + slots)[:, None] * D + d[None, :]
        tl.store(k_cache + new_offsets, k_new)
        tl.store(v_cache + new_offsets, v_new.to(v_cache.dtype.element_ty))


def _check_attention_layout(kernel, q, k, v, k_cache, v_cache):
    """The kernels index q, k, v by (row, [slot,] head, d) with contiguous heads, and the caches by (N, D) rows."""
    D = q.shape[-1]
    for name, x in (('q', q), ('k', k), ('v', v)):
        if x.stride(-1) != 1 or x.stride(-2) != D:
            raise ValueError(f'{kernel}: {name} must have contiguous heads, got strides {x.stride()}')
    if k_cache.stride() != v_cache.stride() or k_cache.stride()[2:] != (D, 1):
        raise ValueError(f'{kernel}: caches need (N, D) contiguous per head, got {k_cache.stride()}')


def _group_attention_triton(q, k, v, k_cache, v_cache, start, q_scale):
    R, P, H, D = q.shape
    _check_attention_layout('group_attention', q, k, v, k_cache, v_cache)
    out = torch.empty(R, P, H, D, device=q.device, dtype=q.dtype)
    # P x BLOCK_N x D products per program: a warp per slot keeps each thread's share as in the one-slot kernel
    _group_attention_kernel[(R, H)](q, k, v, k_cache, v_cache, out, q_scale, start, q.stride(0), q.stride(1),
                                    k.stride(0), k.stride(1), v.stride(0), v.stride(1), out.stride(0), out.stride(1),
                                    k_cache.stride(0), k_cache.stride(1), D=D, P=P, BLOCK_N=16, num_warps=min(P, 8))
    return out


def _decode_attention_triton(q, k, v, k_cache, v_cache, t, q_scale):
    R, H, D = q.shape
    _check_attention_layout('decode_attention', q, k, v, k_cache, v_cache)
    out = torch.empty(R, H, D, device=q.device, dtype=q.dtype)
    _decode_attention_kernel[(R, H)](q, k, v, k_cache, v_cache, out, q_scale, t, q.stride(0), k.stride(0), v.stride(0),
                                     k_cache.stride(0), k_cache.stride(1), H=H, D=D, BLOCK_N=16, num_warps=1)
    return out


def _sampler_key(device, dtype, batch_size, guided, temperature, top_k, top_p, return_logits, compile):
    """What a FastSampler is built for: generate() reuses the cached one only when this matches."""
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
      - on CUDA each step is captured once as a CUDA graph (N / P graphs sharing one memory pool, replayed
        in order); elsewhere the same step functions run eagerly;
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
                 dtype=None, compile=False):
        check_mirrors(model)
        config = model.config
        self.device = model.pos_emb.device
        self.dtype = dtype or (torch.bfloat16 if self.device.type == 'cuda' else model.pos_emb.dtype)
        self.key = _sampler_key(self.device, self.dtype, batch_size, guided, temperature, top_k, top_p, return_logits,
                                compile)
        self.B, self.R, self.guided = batch_size, batch_size * (2 if guided else 1), guided
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.N, self.K, self.C, self.H = config.n_tokens, config.vocab_size, config.width, config.heads
        self.P, self.n_groups = config.tokens_per_step, config.n_tokens // config.tokens_per_step
        self.depth, self.num_classes, self.eps = config.depth, config.num_classes, config.norm_eps
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
            if self.device.type == 'cuda' and self.graphs is None:
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


# ----------------------------------------------------------------------------- GPT.generate's interface
SAMPLERS = weakref.WeakKeyDictionary()  # GPT -> the FastSampler that generate() last used for it


def cached_sampler(model, batch_size, cfg_scale, temperature, top_k, top_p, return_logits, compile=False):
    """The FastSampler for these settings, built (and its graphs captured) once and then reused; other settings
    replace it. The matmul dtype is the autocast dtype when autocast is on, else the model's."""
    device = model.pos_emb.device
    autocast = torch.is_autocast_enabled(device.type)
    dtype = torch.get_autocast_dtype(device.type) if autocast else model.pos_emb.dtype
    guided = torch.is_tensor(cfg_scale) or cfg_scale != 0.0  # as GPT.cfg_schedule decides
    key = _sampler_key(device, dtype, batch_size, guided, temperature, top_k, top_p, return_logits, compile)
    sampler = SAMPLERS.get(model)
    if sampler is None or sampler.key != key:
        SAMPLERS.pop(model, None)  # free the old one's buffers and graphs first
        sampler = FastSampler(model, batch_size, guided, temperature, top_k, top_p, return_logits, dtype,
                              compile=compile)
        SAMPLERS[model] = sampler
    return sampler


@torch.no_grad()
def generate(model, labels, cfg_scale=0.0, cfg_ramp=False, temperature=1.0, top_k=0, top_p=0.0, generator=None,
             prefix=None, n_steps=None, return_logits=False, compile=False):
    """model.generate(labels, ...) through a cached FastSampler (cached_sampler), with compile=True also
    torch.compile'd: the same tokens from the same random numbers. It takes no prefix."""
    if prefix is not None:
        raise ValueError('fast_sample.generate takes no prefix: continue a prefix with model.generate')
    sampler = cached_sampler(model, len(labels), cfg_scale, temperature, top_k, top_p, return_logits, compile)
    return sampler.generate(labels, cfg_scale, cfg_ramp, generator, n_steps)
