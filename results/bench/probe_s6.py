"""One-off diagnosis (session 6, one H100, torch 2.11), kept as the record of the figures it gave. All of them are
in h100_probe_s6.json, merged from these runs (the first two before commit 1e2b106 gave Tokenizer.decode its
static-mask path; the decode section has its own copy of that path, decode_static_mask):
    python results/bench/probe_s6.py OUT.json overlap gemm_autotune     # commit 0cc3e29
    python results/bench/probe_s6.py OUT.json decode                    # commit 0cc3e29
    python results/bench/probe_s6.py OUT.json pixelconv overlap2        # commit 1e2b106 (its pixelconv: superseded)
    python results/bench/probe_s6.py OUT.json pixelconv decode_cudnn    # commit 1e2b106
    python results/bench/probe_s6.py OUT.json gemm_tunable              # commit 8263933
and, for 'train_tok_cudnn_benchmark', bench.py run in-process with torch.backends.cudnn.benchmark set to False, then True:
    python -c "import sys, torch; torch.backends.cudnn.benchmark = True; import bench; \
               sys.argv = ['bench.py', 'train_tok', '--batch', '64', '--compile', '--steps', '15']; bench.main()"
decode:        the titok_b64 decoder at batch 256 (full 64-token prefix), compiled, in variants: autocast over
               float32 weights (sample.py's way), a bfloat16 copy of the weights without autocast, that with the
               static (1, 1, L, L) mask instead of the per-sample one, and both under
               mode='max-autotune-no-cudagraphs'; plus the kernel time by class of the first.
overlap:       sample.py's loop (sample.sample_batches, --compile, 6 batches of 256, CFG 1.5) with the generator on
               the default stream, and on a high-priority stream (the decode side stream stays at the default
               priority, so the block scheduler serves the generator's small kernels first).
overlap2:      a copy of sample.py's loop in which the decoder's cuBLAS GEMMs are limited to fewer SMs
               (torch._C._set_sm_carveout_experimental around the decode call), so the decode of batch b runs
               beside the generator's small kernels of batch b + 1; generator stream default or high priority.
pixelconv:     the decoder's last 3x3 conv (3 -> 3 channels) at batch 256: bf16 NCHW (as under autocast), float32,
               bf16 channels_last, and compiled; each with torch.backends.cudnn.benchmark off and on.
decode_cudnn:  the compiled tok.decode at batch 256 (full prefix) with cudnn.benchmark off and on.
gemm_tunable:  the four block GEMMs at 512 rows (and fc1 with cuBLASLt's GELU epilogue) with torch.cuda.tunable (TunableOp: times
               every cuBLAS / cuBLASLt algorithm for the shape on first call) against the default heuristic.
gemm_autotune: the four block GEMMs of a sampling step at 512 rows: cuBLAS against inductor's max-autotune
               choice, each 20 calls in a CUDA graph.
"""
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import sample  # noqa: E402
from bench import (graph_us as bench_graph_us, kernel_profile, measure_peaks, print_profile,  # noqa: E402
                   spread_weights, timed)
from generator import _FAST_SAMPLERS, GPT, GPTConfig  # noqa: E402
from tokenizer import TokConfig, Tokenizer, flops_per_image  # noqa: E402

out_path, what = sys.argv[1], sys.argv[2:]
results = json.loads(Path(out_path).read_text()) if Path(out_path).exists() else {}
dev = torch.device('cuda', 0)
peaks = measure_peaks(dev)
results['peaks'] = peaks
B = 256
torch.manual_seed(0)
tok_cfg = TokConfig.preset('titok_b64')
with torch.device(dev):
    tok = Tokenizer(tok_cfg).eval()
autocast = torch.autocast('cuda', dtype=torch.bfloat16)


def event_ms(fn):
    return statistics.median(timed(fn, dev, 7, warmup=2)) * 1e3


def graph_us(fn):
    return bench_graph_us(fn, dev, reps=7, warmup=2)


def decode_static_mask(model, zq):
    """Tokenizer.decode_codes for a full prefix: the (L, L) spectral mask broadcast over the batch."""
    P = model.grid ** 2
    h = torch.cat([(model.mask_token + model.dec_pos).expand(len(zq), -1, -1),
                   model.from_code(zq) + model.dec_latent_pos], dim=1)
    for block in model.decoder:
        h = block(h, model.dec_mask)
    patches = model.to_pixels(model.dec_ln(h[:, :P]))
    img = F.fold(patches.transpose(1, 2), model.cfg.image_size, model.cfg.patch_size, stride=model.cfg.patch_size)
    return model.pixel_conv(img).clamp(-1, 1)


if 'decode' in what:
    tokens = torch.randint(tok_cfg.codebook_size, (B, tok_cfg.n_tokens), device=dev)
    flops = B * (flops_per_image(tok_cfg, 1) - flops_per_image(tok_cfg, 0))
    tok16 = copy.deepcopy(tok).to(torch.bfloat16)
    zq16 = tok.quantizer.lookup(tokens).to(torch.bfloat16)
    full = torch.full((B,), tok_cfg.n_tokens, device=dev)
    variants = {
        'autocast': (lambda f: (lambda: f(tokens)), tok.decode, True),
        'bf16': (lambda f: (lambda: f(zq16, full)), tok16.decode_codes, False),
        'bf16+static_mask': (lambda f: (lambda: f(tok16, zq16)), decode_static_mask, False),
    }
    rows = []
    for mode in ('default', 'max-autotune-no-cudagraphs'):
        for name, (call, fn, use_autocast) in variants.items():
            if mode != 'default' and name == 'bf16':
                continue
            t0 = time.perf_counter()
            run = call(torch.compile(fn, mode=mode))
            with torch.autocast('cuda', dtype=torch.bfloat16, enabled=use_autocast), torch.no_grad():
                run()
                torch.cuda.synchronize()
                compile_s = time.perf_counter() - t0
                ms = event_ms(run)
                prof = kernel_profile(run, dev) if name == 'autocast' and mode == 'default' else None
            rows.append({'variant': name, 'mode': mode, 'ms': ms, 'mfu': flops / (ms / 1e3) / peaks['matmul_flops_per_s'],
                         'compile_s': compile_s, **({'profile': prof} if prof else {})})
            print({k: v for k, v in rows[-1].items() if k != 'profile'}, flush=True)
            if prof:
                print_profile(prof, 'one compiled decode')
            torch._dynamo.reset()
    results['decode'] = rows

if 'overlap' in what:
    model = GPT(GPTConfig.preset('d16', n_tokens=64, vocab_size=4096)).to(dev).eval()
    spread_weights(model, 0)
    labels = np.random.default_rng(0).integers(1000, size=6 * B)

    def loop_images_per_s():
        def run():
            for _ in sample.sample_batches(model, tok, labels, B, 0, 64, 1.5, bf16=True, compile=True):
                pass
        run()
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        return len(labels) / statistics.median(times)

    rows = []
    for priority in (None, 'high'):
        stream = torch.cuda.Stream(priority=torch.cuda.Stream.priority_range()[1]) if priority else torch.cuda.current_stream()
        with torch.cuda.stream(stream):
            rows.append({'generator_stream': priority or 'default', 'images_per_s': loop_images_per_s()})
        torch.cuda.synchronize()
        print(rows[-1], flush=True)
    _FAST_SAMPLERS.pop(model, None)
    results['overlap'] = rows

if 'overlap2' in what:
    model = GPT(GPTConfig.preset('d16', n_tokens=64, vocab_size=4096)).to(dev).eval()
    spread_weights(model, 0)
    labels = torch.randint(1000, (6, B), device=dev)
    tokens = torch.randint(tok_cfg.codebook_size, (B, tok_cfg.n_tokens), device=dev)
    decode = torch.compile(tok.decode)
    n_sms = torch.cuda.get_device_properties(dev).multi_processor_count

    def loop(carveout):
        """sample.sample_batches' schedule: batch b decodes (and goes to the host) on a side stream while b + 1 samples."""
        side, pending, out = torch.cuda.Stream(), None, []
        for b, batch_labels in enumerate(labels):
            with autocast:
                codes = model.generate(batch_labels, cfg_scale=1.5, fast=True, compile=True)
            if pending is not None:
                with torch.cuda.stream(side):
                    out.append(pending.to('cpu', torch.uint8))
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), autocast:
                torch._C._set_sm_carveout_experimental(carveout)
                pending = decode(codes).add(1).mul(127.5)
                torch._C._set_sm_carveout_experimental(0)
        with torch.cuda.stream(side):
            out.append(pending.to('cpu', torch.uint8))
        return out

    rows = []
    for priority in (None, 'high'):
        stream = torch.cuda.Stream(priority=torch.cuda.Stream.priority_range()[1]) if priority else torch.cuda.current_stream()
        with torch.cuda.stream(stream):
            for carveout in (0, n_sms // 4, n_sms // 2, 3 * n_sms // 4):
                loop(carveout)
                times = []
                for _ in range(3):
                    t0 = time.perf_counter()
                    loop(carveout)
                    times.append(time.perf_counter() - t0)
                with autocast:
                    torch._C._set_sm_carveout_experimental(carveout)
                    decode_ms = event_ms(lambda: decode(tokens))
                    torch._C._set_sm_carveout_experimental(0)
                rows.append({'generator_stream': priority or 'default', 'carveout_sms': carveout,
                             'images_per_s': labels.numel() / statistics.median(times), 'decode_alone_ms': decode_ms})
                print(rows[-1], flush=True)
        torch.cuda.synchronize()
    _FAST_SAMPLERS.pop(model, None)
    results['overlap2'] = rows

if 'pixelconv' in what:
    conv = tok.pixel_conv
    x = torch.randn(B, 3, 256, 256, device=dev)
    compiled = torch.compile(conv)
    variants = {'bf16 autocast NCHW': (lambda: conv(x16), True), 'float32 NCHW': (lambda: conv(x), False),
                'bf16 autocast channels_last': (lambda: conv(x16_cl), True), 'bf16 autocast compiled': (lambda: compiled(x16), True)}
    x16, x16_cl = x.bfloat16(), x.bfloat16().contiguous(memory_format=torch.channels_last)
    rows = []
    for benchmark in (False, True):
        torch.backends.cudnn.benchmark = benchmark
        for name, (fn, use_autocast) in variants.items():
            with torch.autocast('cuda', dtype=torch.bfloat16, enabled=use_autocast), torch.no_grad():
                rows.append({'variant': name, 'cudnn_benchmark': benchmark, 'ms': event_ms(fn)})
            print(rows[-1], flush=True)
    torch.backends.cudnn.benchmark = False
    results['pixelconv'] = rows

if 'decode_cudnn' in what:
    tokens = torch.randint(tok_cfg.codebook_size, (B, tok_cfg.n_tokens), device=dev)
    rows = []
    for benchmark in (False, True):
        torch.backends.cudnn.benchmark = benchmark
        decode = torch.compile(tok.decode)
        with autocast:
            rows.append({'cudnn_benchmark': benchmark, 'decode_ms': event_ms(lambda: decode(tokens))})
            prof = kernel_profile(lambda: decode(tokens), dev)
        print(rows[-1], prof['kernel_ms_by_class'], [(round(k['ms'], 2), k['name'][:60]) for k in prof['top_kernels'][:6]], flush=True)
        torch._dynamo.reset()
    torch.backends.cudnn.benchmark = False
    results['decode_cudnn'] = rows

if 'gemm_tunable' in what:
    C, hidden, M = 1024, 4096, 512
    cases = {}
    for name, (K, N) in {'qkv': (C, 3 * C), 'proj': (C, C), 'fc1': (C, hidden), 'fc2': (hidden, C)}.items():
        x = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
        w = torch.randn(N, K, device=dev, dtype=torch.bfloat16) / K ** 0.5
        b = torch.randn(N, device=dev, dtype=torch.bfloat16)
        cases[name] = (lambda x=x, w=w, b=b: F.linear(x, w, b), 2 * M * K * N)
        if name == 'fc1':
            cases['fc1+gelu'] = (lambda x=x, w=w, b=b: torch._addmm_activation(b, x, w.t(), use_gelu=True), 2 * M * K * N)
    rows = {name: {'gemm': name, 'default_us': graph_us(fn), 'floor_us': f / peaks['matmul_flops_per_s'] * 1e6}
            for name, (fn, f) in cases.items()}
    torch.cuda.tunable.enable(True)
    torch.cuda.tunable.tuning_enable(True)
    torch.cuda.tunable.set_filename(str(Path(out_path).with_suffix('.tunableop.csv')))
    for name, (fn, _) in cases.items():
        rows[name]['tunable_us'] = graph_us(fn)
        print(rows[name], flush=True)
    print(torch.cuda.tunable.get_results())
    torch.cuda.tunable.enable(False)
    results['gemm_tunable'] = list(rows.values())

if 'gemm_autotune' in what:
    C, hidden, M = 1024, 4096, 512
    rows = []
    for name, (K, N) in {'qkv': (C, 3 * C), 'proj': (C, C), 'fc1': (C, hidden), 'fc2': (hidden, C)}.items():
        x = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
        w = torch.randn(N, K, device=dev, dtype=torch.bfloat16) / K ** 0.5
        b = torch.randn(N, device=dev, dtype=torch.bfloat16)
        tuned = torch.compile(lambda x, w, b: F.linear(x, w, b), mode='max-autotune-no-cudagraphs', dynamic=False)
        err = ((tuned(x, w, b).float() - F.linear(x, w, b).float()).norm() / F.linear(x, w, b).float().norm()).item()
        rows.append({'gemm': name, 'M': M, 'cublas_us': graph_us(lambda: F.linear(x, w, b)),
                     'autotuned_us': graph_us(lambda: tuned(x, w, b)), 'rel_diff': err,
                     'floor_us': 2 * M * K * N / peaks['matmul_flops_per_s'] * 1e6})
        print(rows[-1], flush=True)
        torch._dynamo.reset()
    results['gemm_autotune'] = rows

Path(out_path).write_text(json.dumps(results, indent=1))
