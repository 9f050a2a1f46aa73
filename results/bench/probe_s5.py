"""One-off diagnosis (session 5, one H100), kept as the record of the figures it gave:
    python results/bench/probe_s5.py OUT.json groups kernels gemm      # h100_probe_s5.json (commit 604680f)
    python results/bench/probe_s5.py OUT.json kernels fc1gelu          # h100_probe_s5_fused.json (commit e3a5a92:
                                                                       # residual + LayerNorm fused, q/k norm in
                                                                       # decode_attention; before the GELU epilogue)
groups:  FastSampler (d16, batch 256, CFG: 512 rows, bf16, compiled, CUDA graphs) generate ms with the rows
         split into 1, 2 and 4 groups on their own streams (FastSampler's `groups` argument of commit 604680f,
         removed after this measured 90.0 / 99.5 / 125.6 ms: the streams slowed sampling down).
kernels: every CUDA kernel of one un-graphed compiled step (t = 4 and t = 60, one group), in launch order,
         for block 0, and the step's kernel time by kind.
fc1gelu: the MLP's first GEMM and its GELU(tanh) at 512 rows, 20 calls in a CUDA graph: F.linear + F.gelu
         compiled (a cuBLAS GEMM, then a Triton pointwise kernel) against torch._addmm_activation(use_gelu=True)
         (cuBLASLt's GELU epilogue).
gemm:    each block GEMM of a sampling step (F.linear with bias, bf16) at 128, 256 and 512 rows, 20 calls in a
         CUDA graph, against its FLOP floor at the measured matmul rate.
"""
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench import graph_us, measure_peaks, spread_weights, timed  # noqa: E402
from generator import GPT, FastSampler, GPTConfig  # noqa: E402

out_path, what = sys.argv[1], sys.argv[2:]
results = json.loads(Path(out_path).read_text()) if Path(out_path).exists() else {}
dev = torch.device('cuda', 0)
peaks = measure_peaks(dev)
results['peaks'] = peaks
B = 256
model = GPT(GPTConfig.preset('d16', n_tokens=64, vocab_size=4096)).to(dev).eval()
spread_weights(model, 0)
labels = torch.randint(1000, (B,), device=dev)


if 'groups' in what:
    rows = []
    for groups in (1, 2, 4):
        sampler = FastSampler(model, B, True, dtype=torch.bfloat16, compile=True, groups=groups)
        ms = statistics.median(timed(lambda: sampler.generate(labels, cfg_scale=1.5), dev, 5)) * 1e3
        rows.append({'groups': groups, 'generate_ms': ms})
        print(rows[-1], flush=True)
        del sampler
        torch.cuda.empty_cache()
    results['groups'] = rows

if 'kernels' in what:
    from torch.profiler import ProfilerActivity, profile
    sampler = FastSampler(model, B, True, dtype=torch.bfloat16, compile=True, cuda_graphs=False)
    sampler.generate(labels, cfg_scale=1.5)
    out = {}
    for t in (4, 60):
        with torch.no_grad():
            sampler._step(t)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof, torch.no_grad():
            sampler._step(t)
            torch.cuda.synchronize()
        kernels = sorted((e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA),
                         key=lambda e: e.time_range.start)
        names = [(e.name[:100], e.time_range.elapsed_us()) for e in kernels]
        out[f't{t}'] = {'n_kernels': len(names), 'kernel_us_total': sum(us for _, us in names),
                        'first_kernels': [{'name': n, 'us': us} for n, us in names[:16]]}
        print(t, out[f't{t}']['n_kernels'], out[f't{t}']['kernel_us_total'], flush=True)
        for n, us in names[:16]:
            print(f'   {us:7.1f} us  {n}')
    results['kernels'] = out

if 'fc1gelu' in what:
    x = torch.randn(512, 1024, device=dev, dtype=torch.bfloat16)
    w = torch.randn(4096, 1024, device=dev, dtype=torch.bfloat16) / 32
    b = torch.randn(4096, device=dev, dtype=torch.bfloat16)
    compiled = torch.compile(lambda x, w, b: F.gelu(F.linear(x, w, b), approximate='tanh'), fullgraph=True)
    epilogue = lambda: torch._addmm_activation(b, x, w.t(), use_gelu=True)  # noqa: E731
    err = ((epilogue().float() - compiled(x, w, b).float()).norm() / compiled(x, w, b).float().norm()).item()
    results['fc1gelu'] = {'compiled_us': graph_us(lambda: compiled(x, w, b), dev), 'epilogue_us': graph_us(epilogue, dev),
                          'rel_diff': err}
    print(results['fc1gelu'], flush=True)

if 'gemm' in what:
    C, hidden = 1024, 4096
    shapes = {'qkv': (C, 3 * C), 'proj': (C, C), 'fc1': (C, hidden), 'fc2': (hidden, C)}
    rows = []
    for M in (128, 256, 512):
        for name, (K, N) in shapes.items():
            x = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
            w = torch.randn(N, K, device=dev, dtype=torch.bfloat16)
            b = torch.randn(N, device=dev, dtype=torch.bfloat16)
            us = graph_us(lambda: F.linear(x, w, b), dev)
            floor = 2 * M * K * N / peaks['matmul_flops_per_s'] * 1e6
            rows.append({'M': M, 'gemm': name, 'us': us, 'floor_us': floor, 'tflops': 2 * M * K * N / us / 1e6})
            print(rows[-1], flush=True)
    results['gemm'] = rows

Path(out_path).write_text(json.dumps(results, indent=1))
