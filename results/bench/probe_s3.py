"""One-off diagnosis (session 3, one H100), kept as the record of the figures it gave (h100_probe_s3.json):
    python results/bench/probe_s3.py attn dec tok gen     # from the repo root; writes $OUT/probe.json
attn: decode attention (512 rows, 16 heads, q length 1) per SDPA backend and as bmm / compiled reductions;
dec: titok_b64 decode at batch 256, explicit mask vs unmasked + lower-right-causal split, eager and compiled;
tok, gen: kernel time by class of bench.py's train_tok / train_gen steps (bench.run_train_variants swapped).
"""
import json, os, sys, time
sys.path.insert(0, '.')
import torch, torch.nn.functional as F
from torch.nn.attention import sdpa_kernel, SDPBackend
from torch.nn.attention.bias import causal_lower_right
import bench
dev = torch.device('cuda')
torch.backends.cuda.matmul.allow_tf32 = True
out = {}

def ctime(fn, reps=20, warmup=3):
    for _ in range(warmup): fn()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(reps): fn()
    b.record(); torch.cuda.synchronize()
    return a.elapsed_time(b) / reps

what = sys.argv[1:] or ['attn', 'dec', 'tok', 'gen']
if 'attn' in what:
    R, H, D, N = 512, 16, 64, 64
    cache = torch.randn(2, R, H, N, D, device=dev, dtype=torch.bfloat16)
    q = torch.randn(R, H, 1, D, device=dev, dtype=torch.bfloat16)
    def reduce_attn(q, k, v):
        s = (q.float() * k.float()).sum(-1, keepdim=True)  # (R,H,S,1)
        p = s.softmax(dim=2)
        return (p * v.float()).sum(2, keepdim=True).to(q.dtype)
    comp = torch.compile(reduce_attn, dynamic=True)
    def bmm_attn(q, k, v):
        p = (q @ k.transpose(-1, -2)).float().softmax(-1).to(q.dtype)
        return p @ v
    compb = torch.compile(bmm_attn, dynamic=True)
    rows = []
    for S in (8, 33, 64):
        k, v = cache[0, :, :, :S], cache[1, :, :, :S]
        floor = 2 * R * H * S * D * 2 / 3.0e12 * 1e3
        r = {'S': S, 'floor_ms': floor}
        ref = F.scaled_dot_product_attention(q, k, v, scale=1.0).float()
        r['default'] = ctime(lambda: F.scaled_dot_product_attention(q, k, v, scale=1.0))
        for name, be in (('flash', SDPBackend.FLASH_ATTENTION), ('efficient', SDPBackend.EFFICIENT_ATTENTION),
                         ('cudnn', SDPBackend.CUDNN_ATTENTION), ('math', SDPBackend.MATH)):
            try:
                with sdpa_kernel(be):
                    r[name] = ctime(lambda: F.scaled_dot_product_attention(q, k, v, scale=1.0))
            except Exception as e:
                r[name] = repr(e)[:80]
        r['bmm'] = ctime(lambda: bmm_attn(q, k, v))
        r['compiled_reduce'] = ctime(lambda: comp(q, k, v))
        r['compiled_reduce_err'] = ((comp(q, k, v).float() - ref).abs().max() / ref.abs().max()).item()
        r['compiled_bmm'] = ctime(lambda: compb(q, k, v))
        rows.append(r); print(r, flush=True)
    out['attn'] = rows

if 'dec' in what:
    from tokenizer import Tokenizer, TokConfig
    tok = Tokenizer(TokConfig.preset('titok_b64')).to(dev).eval()
    B = 256
    idx = torch.randint(4096, (B, 64), device=dev)
    P, N = 256, 64
    def split_forward(self, x, mask):
        Bx, L, Dm = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(Bx, L, 3, self.heads, Dm // self.heads).permute(2, 0, 3, 1, 4)
        ctx = F.scaled_dot_product_attention(q[:, :, :P], k, v)
        lat = F.scaled_dot_product_attention(q[:, :, P:], k, v, attn_mask=causal_lower_right(N, L))
        attn = torch.cat((ctx, lat), dim=2)
        x = x + self.proj(attn.transpose(1, 2).reshape(Bx, L, Dm))
        return x + self.mlp(self.ln2(x))
    import tokenizer as T
    orig = T.Block.forward
    res = {}
    with torch.no_grad(), torch.autocast('cuda', dtype=torch.bfloat16):
        ref = tok.decode(idx).float()
        res['masked_eager'] = ctime(lambda: tok.decode(idx), reps=5)
        T.Block.forward = split_forward
        got = tok.decode(idx).float()
        res['split_err'] = (got - ref).abs().max().item()
        res['split_eager'] = ctime(lambda: tok.decode(idx), reps=5)
        T.Block.forward = orig
        dc = torch.compile(tok.decode)
        res['masked_compiled'] = ctime(lambda: dc(idx), reps=5)
        T.Block.forward = split_forward
        torch._dynamo.reset()
        dc = torch.compile(tok.decode)
        res['split_compiled'] = ctime(lambda: dc(idx), reps=5)
        T.Block.forward = orig
    print('decode ms at B=256', res, flush=True)
    out['dec'] = res

def profile_train(kind, argv):
    captured = {}
    def fake_run(args, device, peaks, build, model_name, bench_name):
        for compile in ([False, True] if args.compile else [False]):
            torch._dynamo.reset()
            step, flops, extra = build(args.batch[0], compile)
            for _ in range(4): step()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(5): step()
            torch.cuda.synchronize()
            wall = (time.perf_counter() - t0) / 5 * 1e3
            prof = bench.kernel_profile(lambda: [step() for _ in range(3)], device)
            busy = sum(prof['kernel_ms_by_class'].values()) / 3
            r = dict(kind=kind, compile=compile, wall_ms=wall, kernel_ms=busy, mfu=flops / (wall / 1e3) / peaks['matmul_flops_per_s'],
                     by_class={k: v / 3 for k, v in prof['kernel_ms_by_class'].items()},
                     top=[(t['name'][:90], t['count'] // 3, round(t['ms'] / 3, 2)) for t in prof['top_kernels']])
            print(json.dumps(r, indent=0), flush=True)
            out.setdefault('train', []).append(r)
            del step
        return []
    bench.run_train_variants = fake_run
    import argparse
    args = argparse.Namespace(**argv)
    peaks = bench.measure_peaks(dev)
    {'tok': bench.bench_train_tok, 'gen': bench.bench_train_gen}[kind](args, dev, peaks)

if 'tok' in what:
    profile_train('tok', dict(preset='titok_b64', batch=[64], lpips=True, gan=True, bf16=True, compile=True, seed=0))
if 'gen' in what:
    profile_train('gen', dict(preset='d16', batch=[256], bf16=True, compile=True, seed=0))
json.dump(out, open(os.path.join(os.environ.get('OUT', '.'), 'probe.json'), 'w'), indent=1)
