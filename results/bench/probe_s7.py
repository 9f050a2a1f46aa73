"""One-off diagnosis (session 7, one H100, torch 2.11), kept as the record of the figures it gave
(h100_probe_s7.json):
    python results/bench/probe_s7.py OUT.json decode
    python results/bench/probe_s7.py OUT.json train_attn attn_cfg
    git show b0b0fe6:sample.py > OLD.py && python results/bench/probe_s7.py OUT.json loop OLD.py  # at commit 3812950
decode:     the titok_b64 decoder at batch 256 (full 64-token prefix), bfloat16 weights, compiled, as one functional
            copy of Tokenizer.decode_codes with three switches: attention (SDPA with the static (L, L) mask, or
            FlexAttention with a block mask), the MLP's GELU (exact as a separate kernel, or tanh fused into the fc1
            GEMM as cuBLASLt's epilogue) and the 3x3 pixel conv (cuDNN, or a 27-tap stencil written as
            pointwise math that inductor fuses with the unpatchify and clamp). Max |difference| to the first.
train_attn: the tokenizer's attention alone, forward + backward at batch 64 (L = 320, 12 heads of 64): SDPA with
            the decoder's per-sample (B, 1, L, L) prefix mask (train_tok's), or with the encoder's static mask,
            against compiled FlexAttention with the same masks as block masks (the per-sample one rebuilt each call,
            its build included).
loop:       sample.py's loop at batch 256 (bench.sample_py_throughput: 6 batches, --compile, CFG 1.5, d16 +
            titok_b64), 4 runs alternating between this checkout's sample.py and the one at OLD.py. Run at
            commit 3812950, whose loop decoded on the sampling stream and copied batch b to the host on a side
            stream, against b0b0fe6's (batch b decodes and copies on a side stream beside the sampling of b + 1).
            The second was faster, and 3812950 was reverted.
attn_cfg:   generator.decode_attention's kernel at 512 rows (d16, batch 256 with CFG) and cache positions t, for
            chunk sizes BLOCK_N and warps per program; the landed config is BLOCK_N=16, num_warps=1.
"""
import argparse
import copy
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench import graph_us as bench_graph_us, kernel_profile, measure_peaks, print_profile, timed  # noqa: E402
from generator import _decode_attention_kernel  # noqa: E402
from tokenizer import TokConfig, Tokenizer, flops_per_image  # noqa: E402

out_path, what = sys.argv[1], [a for a in sys.argv[2:] if not a.endswith('.py')]
results = json.loads(Path(out_path).read_text()) if Path(out_path).exists() else {}
dev = torch.device('cuda', 0)
peaks = measure_peaks(dev)
results['peaks'] = peaks
torch.manual_seed(0)
tok_cfg = TokConfig.preset('titok_b64')
with torch.device(dev):
    tok = Tokenizer(tok_cfg).eval()
P, N = tok.grid ** 2, tok_cfg.n_tokens
L = P + N
flex = torch.compile(flex_attention)


def event_ms(fn):
    return statistics.median(timed(fn, dev, 7, warmup=2)) * 1e3


def dec_allowed(b, h, q, kv):  # Tokenizer.dec_mask: mask tokens see all, latent i sees the context and latents <= i
    return (kv < P) | (q < P) | (kv <= q)


def enc_allowed(b, h, q, kv):  # Tokenizer.enc_mask: patches see patches, latent i sees patches and latents <= i
    return (kv < P) | ((q >= P) & (kv <= q))


def decode(model, zq, attention, gelu, conv, block_mask=None):
    """Tokenizer.decode_codes (full prefix, static mask) with the switches above, then the clamp."""
    B, D, H = len(zq), model.cfg.width, model.cfg.heads
    h = torch.cat([(model.mask_token + model.dec_pos).expand(B, -1, -1), model.from_code(zq) + model.dec_latent_pos], 1)
    for blk in model.decoder:
        q, k, v = blk.qkv(blk.ln1(h)).view(B, L, 3, H, D // H).permute(2, 0, 3, 1, 4)
        a = flex_attention(q, k, v, block_mask=block_mask) if attention == 'flex' else \
            F.scaled_dot_product_attention(q, k, v, attn_mask=model.dec_mask)
        h = h + blk.proj(a.transpose(1, 2).reshape(B, L, D))
        fc1, fc2 = blk.mlp[0], blk.mlp[2]
        x = blk.ln2(h)
        if gelu == 'tanh_epilogue':
            m = torch._addmm_activation(fc1.bias, x.reshape(-1, D), fc1.weight.t(), use_gelu=True).view(B, L, -1)
        else:
            m = F.gelu(fc1(x))
        h = h + fc2(m)
    patches = model.to_pixels(model.dec_ln(h[:, :P]))
    S, p = model.cfg.image_size, model.cfg.patch_size
    img = F.fold(patches.transpose(1, 2), S, p, stride=p)
    if conv == 'stencil':
        w, bias = model.pixel_conv.weight, model.pixel_conv.bias
        padded = F.pad(img, (1, 1, 1, 1))
        taps = torch.stack([padded[:, :, dy:dy + S, dx:dx + S] for dy in range(3) for dx in range(3)], 2)  # (B, 3, 9, S, S)
        img = (taps[:, None] * w.reshape(1, 3, 3, 9, 1, 1)).sum((2, 3)) + bias.view(1, 3, 1, 1)
    else:
        img = model.pixel_conv(img)
    return img.clamp(-1, 1)


if 'decode' in what:
    B = 256
    tokens = torch.randint(tok_cfg.codebook_size, (B, N), device=dev)
    flops = B * (flops_per_image(tok_cfg, 1) - flops_per_image(tok_cfg, 0))
    tok16 = copy.deepcopy(tok).to(torch.bfloat16)
    zq16 = tok.quantizer.lookup(tokens).to(torch.bfloat16)
    block_mask = create_block_mask(dec_allowed, None, None, L, L, device=dev)
    variants = [('sdpa', 'exact', 'cudnn'), ('flex', 'exact', 'cudnn'), ('sdpa', 'tanh_epilogue', 'cudnn'),
                ('sdpa', 'exact', 'stencil'), ('flex', 'tanh_epilogue', 'stencil')]
    rows, reference = [], None
    with torch.no_grad():
        for attention, gelu, conv in variants:
            t0 = time.perf_counter()
            fn = torch.compile(decode)
            run = (lambda: fn(tok16, zq16, attention, gelu, conv, block_mask))
            img = run()
            torch.cuda.synchronize()
            compile_s = time.perf_counter() - t0
            reference = img.float() if reference is None else reference
            ms = event_ms(run)
            prof = kernel_profile(run, dev) if (attention, gelu, conv) in (variants[0], variants[-1]) else None
            rows.append({'attention': attention, 'gelu': gelu, 'conv': conv, 'ms': ms, 'compile_s': compile_s,
                         'mfu': flops / (ms / 1e3) / peaks['matmul_flops_per_s'],
                         'max_abs_diff': (img.float() - reference).abs().max().item(), **({'profile': prof} if prof else {})})
            print({k: v for k, v in rows[-1].items() if k != 'profile'}, flush=True)
            if prof:
                print_profile(prof, 'one compiled decode')
            torch._dynamo.reset()
    results['decode'] = rows

if 'train_attn' in what:
    B, H, Dh = 64, tok_cfg.heads, tok_cfg.width // tok_cfg.heads
    q, k, v = (torch.randn(B, H, L, Dh, device=dev, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    grad = torch.randn(B, H, L, Dh, device=dev, dtype=torch.bfloat16)
    prefix = torch.randint(1, N + 1, (B,), device=dev)

    def prefix_allowed(b, h, qi, kv):
        return dec_allowed(b, h, qi, kv) & ((kv < P) | (kv - P < prefix[b]))

    def sdpa_step(mask):
        return lambda: torch.autograd.backward(F.scaled_dot_product_attention(q, k, v, attn_mask=mask), grad)

    def flex_step(mask_mod, per_sample):
        static = create_block_mask(mask_mod, None, None, L, L, device=dev)

        def step():
            bm = create_block_mask(mask_mod, B, None, L, L, device=dev) if per_sample else static
            torch.autograd.backward(flex(q, k, v, block_mask=bm), grad)
        return step

    visible = torch.ones(B, L, dtype=torch.bool, device=dev)
    visible[:, P:] = torch.arange(N, device=dev) < prefix[:, None]
    cases = {'decoder, per-sample prefix': (sdpa_step((tok.dec_mask & visible[:, None, :])[:, None]),
                                            flex_step(prefix_allowed, True)),
             'encoder, static': (sdpa_step(tok.enc_mask), flex_step(enc_allowed, False))}
    rows = []
    for name, (sdpa_fn, flex_fn) in cases.items():
        row = {'case': name, 'sdpa_ms': event_ms(sdpa_fn), 'flex_ms': event_ms(flex_fn)}
        outs = []
        for fn in (sdpa_fn, flex_fn):
            q.grad = k.grad = v.grad = None
            fn()
            outs.append(q.grad.float())
        row['q_grad_max_abs_diff'] = (outs[0] - outs[1]).abs().max().item()
        rows.append(row)
        print(row, flush=True)
    results['train_attn'] = rows

if 'attn_cfg' in what:
    R, H, D, cache_len = 512, 16, 64, 65
    q, k, v = (torch.randn(R, H, D, device=dev, dtype=torch.bfloat16) for _ in range(3))
    k_cache, v_cache = (torch.randn(R, H, cache_len, D, device=dev, dtype=torch.bfloat16) for _ in range(2))
    q_scale = torch.ones(H, device=dev)
    out = torch.empty_like(q)
    rows = []
    for t in (4, 16, 32, 48, 63):
        floor_us = R * H * (t + 1) * D * 2 * 2 / peaks['hbm_bytes_per_s'] * 1e6
        for block_n in (16, 32, 64):
            for warps in (1, 2, 4):
                def call():
                    _decode_attention_kernel[(R, H)](q, k, v, k_cache, v_cache, out, q_scale, t, q.stride(0), k.stride(0),
                                                     v.stride(0), k_cache.stride(0), k_cache.stride(1), H=H, D=D,
                                                     BLOCK_N=block_n, num_warps=warps)
                rows.append({'t': t, 'block_n': block_n, 'num_warps': warps, 'us': bench_graph_us(call, dev, reps=7, warmup=2),
                             'floor_us': floor_us})
                print(rows[-1], flush=True)
    results['attn_cfg'] = rows

if 'loop' in what:
    import bench
    import sample
    from generator import GPT, GPTConfig
    old_path = next(a for a in sys.argv[2:] if a.endswith('.py'))
    spec = importlib.util.spec_from_file_location('sample_old', old_path)
    sample_old = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sample_old)
    model = GPT(GPTConfig.preset('d16', n_tokens=N, vocab_size=tok_cfg.codebook_size)).to(dev).eval()
    bench.spread_weights(model, 0)
    args = argparse.Namespace(seed=0, cfg=1.5, top_k=0, top_p=0.0)
    rows = []
    for run in range(4):
        for name, module in (('this checkout', sample), ('OLD.py', sample_old)):
            sys.modules['sample'] = module  # sample_py_throughput imports it
            rows.append({'sample_py': name, 'run': run,
                         'images_per_s': bench.sample_py_throughput(model, tok, 256, args, True, True)})
            print(rows[-1], flush=True)
    sys.modules['sample'] = sample
    results['loop'] = rows

Path(out_path).write_text(json.dumps(results, indent=1))
