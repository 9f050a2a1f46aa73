"""Session 4 probe: one sampling step's attention (d16 at batch 256 with CFG: 512 rows, 16 heads, D 64,
cache of 64), torch's SDPA (cuDNN picks itself) after writing the new key/value, against
generator.decode_attention's Triton kernel at several warp counts. Prints and writes JSON (argv[1]).

    python results/bench/probe_s4.py out.json
"""
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import generator  # noqa: E402

R, H, N, D = 512, 16, 64, 64
reps = 200
qkv = torch.randn(R, 3, H, D, device='cuda', dtype=torch.bfloat16)
q, k, v = qkv.unbind(1)
cache = torch.randn(2, R, H, N, D, device='cuda', dtype=torch.bfloat16)
bandwidth = 2.97e12  # measured copy bandwidth of this H100 (bench.py, session 3)


def time_us(fn):
    for _ in range(10):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    graph = torch.cuda.CUDAGraph()  # replayed as the sampler does: launch cost as in a real run
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    with torch.cuda.graph(graph):
        for _ in range(20):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    start.record()
    for _ in range(reps // 20):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / reps


def sdpa(t):
    cache[0, :, :, t].copy_(k)
    cache[1, :, :, t].copy_(v)
    return F.scaled_dot_product_attention(q[:, :, None], cache[0, :, :, :t + 1], cache[1, :, :, :t + 1], scale=1.0)


def triton_kernel(t, warps):
    out = torch.empty(R, H, D, device='cuda', dtype=torch.bfloat16)
    generator._decode_attention_kernel[(R, H)](q, k, v, cache[0], cache[1], out, t, q.stride(0), k.stride(0), v.stride(0),
                                              cache[0].stride(0), cache[0].stride(1), H=H, D=D, BLOCK_N=N, num_warps=warps)
    return out


rows = []
for t in (0, 8, 33, 63):
    row = {'t': t, 'floor_us': (R * H * D * 2 * 2 * (t + 1)) / bandwidth * 1e6, 'sdpa_us': time_us(lambda: sdpa(t))}
    for warps in (1, 2, 4, 8):
        row[f'triton_w{warps}_us'] = time_us(lambda: triton_kernel(t, warps))
    rows.append(row)
    print(' '.join(f'{key} {value:.1f}' if isinstance(value, float) else f'{key} {value}' for key, value in row.items()))
if len(sys.argv) > 1:
    Path(sys.argv[1]).write_text(json.dumps(rows, indent=1))
