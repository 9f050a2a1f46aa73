"""
Throughput benchmarks that print a short table last and append JSON lines (--json).

    python bench.py loader --data ../shared/data/imagenet256-sample --size 256 --batch 256 --workers 16
    python bench.py sample --preset d16 --tok_preset titok_b64 --batch 64 256 --cfg 1.5 [--compile]
    python bench.py sample --preset d16 --tok_preset titok_b64 --batch 256 --cfg 1.5 --tokens_per_step 1 4 [--profile]
    python bench.py train_gen --preset d16 --batch 256 [--compile]
    python bench.py train_tok --preset titok_b64 --batch 64 [--compile]
    python bench.py table --json bench.jsonl          # the table of every record in a JSON-lines file

loader: images/s of the training data loader alone (decode + ADM center crop + collate), the figure
the trainers must not be held back by.

sample, train_gen, train_tok build models with RANDOM weights (speed does not depend on them; the
samples are noise) and first measure the device's two ceilings: HBM bandwidth by a 1 GiB
device-to-device copy (bytes read + written) and the bf16 matmul rate by an 8192^3 product (on a CPU:
a 64 MiB copy and a 1024^3 float32 product). Every floor below uses those two measured numbers.

sample: the reference GPT.generate loop ('slow') and fast_sample.FastSampler ('fast', and with --compile
'fast+compile') at each --batch, with CFG (a 2B-row batch) unless --cfg 0, bf16 on CUDA, for each
--tokens_per_step P (model 'd16-p4': N / P steps of P tokens, same seed and weights' spread). Reported:
images/s end to end (generate + tokenizer decode to pixels, one batch), images/s of sample.py's own loop
(fast paths: 6 batches through sample.sample_batches, uint8 images copied to the host; on CUDA it decodes
and copies batch b on a side stream while batch b + 1 samples), generator ms per batch and per step,
tokenizer decode ms, peak memory, and the floors. Floor of step g (P new slots, (g + 1) P visible
positions), R rows:
  FLOPs  2 R P (matmul weights of the blocks + head) + 4 R P depth width (g + 1) P     (QK^T, AV)
  bytes  weights of the blocks + head (bf16) + AdaLN terms R depth 6 width (bf16)
         + KV cache read R depth 2 width (g + 1) P (bf16) + KV write of P + logits/noise of P (float32)
  floor  max(FLOPs / matmul rate, bytes / bandwidth); step 0 adds the once-per-sequence AdaLN matmuls.
Decode floor: B x decoder FLOPs (tokenizer.flops_per_image, decoder part) / matmul rate. For the fast
path on CUDA each step is also timed alone (CUDA events between graph replays): 'worst step/floor'.
--profile adds the CUDA kernel time by class of the fast path's middle step, run once outside its graph.
A check at the first batch size (--check): each path's logits against a float32 teacher-forced forward
pass over its own tokens (the fast path must stay within 2x of the reference loop's error), and the
share of tokens equal to the reference loop's for the same seed (sampled and greedy).

train_gen / train_tok: forward + backward + fused AdamW steps in-process, bf16 autocast on CUDA, on
random tokens / random images; --compile adds a torch.compile row next to the eager one; --profile adds
the CUDA kernel time of one step by class and its top kernels.
  train_gen FLOPs per step: 6 x matmul weights x tokens (qkv, proj, MLP, head per token; AdaLN per
  sample) + 12 depth width N per token (attention, counted as non-causal, as nanoGPT).
  train_tok mirrors train_tok.py's step after --disc_start: tokenizer (L2 + VQ + LPIPS + hinge GAN),
  EMA, then the discriminator step with LeCam. FLOPs: 3 x tokenizer.flops_per_image (what
  train_tok.py's mfu counts) + LPIPS VGG16 1.5 x its forward on the (recon, target) pair (input
  gradients only, VGG is frozen) + 8 x the PatchGAN forward (G step 2, D step 6); convs counted by
  hooks. LPIPS uses its real weights when installed, otherwise random ones (said in the output).
MFU = counted FLOPs / time / measured matmul rate.
"""
import argparse
import copy
import json
import math
import os
import statistics
import sys
import tempfile
import time
import traceback

import torch
import torch.nn as nn
import torch.nn.functional as F

import common


# ----------------------------------------------------------------------------- helpers

def pick_device(name):
    if name == 'auto':
        name = 'cuda' if torch.cuda.is_available() else 'cpu'
    device = torch.device(name)
    if device.type == 'cuda' and device.index is None:
        device = torch.device('cuda', torch.cuda.current_device())
    return device


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def timed(fn, device, reps, warmup=1):
    """Seconds of each of `reps` calls after `warmup` calls: CUDA events on a GPU, a synced host clock elsewhere."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(reps):
        if device.type == 'cuda':
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return times


def reset_peak(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gb(device):
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == 'cuda' else float('nan')


def free_memory(device):
    import gc
    gc.collect()
    if device.type == 'cuda':
        torch.cuda.empty_cache()


def measure_peaks(device):
    """The two ceilings, measured: copy bandwidth (bytes read + written) and the matmul rate."""
    if device.type == 'cuda':
        n_bytes, size, dtype, reps = 1 << 30, 8192, torch.bfloat16, 20
    else:
        n_bytes, size, dtype, reps = 1 << 26, 1024, torch.float32, 5
    src = torch.empty(n_bytes, dtype=torch.uint8, device=device).random_()  # never time on zeros
    dst = torch.empty_like(src)
    bandwidth = 2 * n_bytes / statistics.median(timed(lambda: dst.copy_(src), device, reps, warmup=3))
    del src, dst
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    c = torch.empty_like(a)
    flops = 2 * size ** 3 / statistics.median(timed(lambda: torch.mm(a, b, out=c), device, reps, warmup=3))
    del a, b, c
    free_memory(device)
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'
    print(f"{name}: measured {bandwidth / 1e12:.2f} TB/s copy bandwidth, {flops / 1e12:.1f} TFLOP/s "
          f"{str(dtype).replace('torch.', '')} {size}^3 matmul")
    return {'device_name': name, 'torch': torch.__version__, 'hbm_bytes_per_s': bandwidth, 'matmul_flops_per_s': flops,
            'matmul_dtype': str(dtype).replace('torch.', '')}


def error_text(e):
    """The first line of an exception, for a record that failed."""
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]


def write_json(path, records):
    """Append the records to the --json file, if one was given."""
    if path:
        for record in records:
            common.log_jsonl(path, record)


def fmt(v, spec):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return '-'
    return format(v, spec)


def print_table(records):
    """One short table per bench kind (the last thing printed)."""
    kinds = [('sample', [('model', 'model', 's'), ('variant', 'variant', 's'), ('B', 'batch', 'd'),
                         ('img/s', 'images_per_s', '.0f'), ('sample.py img/s', 'sample_py_images_per_s', '.0f'),
                         ('floor img/s', 'floor_images_per_s', '.0f'),
                         ('gen ms', 'gen_ms', '.1f'), ('ms/step', 'ms_per_step', '.3f'),
                         ('gen/floor', 'gen_over_floor', '.2f'), ('worst step/floor', 'worst_step_over_floor', '.2f'),
                         ('decode ms', 'decode_ms', '.1f'), ('dec MFU', 'decode_mfu', '.1%'),
                         ('peak GB', 'peak_mem_gb', '.2f'), ('1st call s', 'first_call_s', '.1f')]),
             ('train_gen', [('model', 'model', 's'), ('variant', 'variant', 's'), ('B', 'batch', 'd'),
                            ('img/s', 'images_per_s', '.0f'), ('tok/s', 'tokens_per_s', '.0f'),
                            ('ms/step', 'ms_per_step', '.1f'), ('MFU', 'mfu', '.1%'), ('peak GB', 'peak_mem_gb', '.2f'),
                            ('1st steps s', 'warmup_s', '.1f')]),
             ('train_tok', [('model', 'model', 's'), ('variant', 'variant', 's'), ('B', 'batch', 'd'),
                            ('img/s', 'images_per_s', '.1f'), ('ms/step', 'ms_per_step', '.1f'), ('MFU', 'mfu', '.1%'),
                            ('MFU tok only', 'mfu_tokenizer_only', '.1%'), ('peak GB', 'peak_mem_gb', '.2f'),
                            ('1st steps s', 'warmup_s', '.1f')]),
             ('loader', [('data', 'data', 's'), ('B', 'batch', 'd'), ('workers', 'workers', 'd'),
                         ('img/s', 'images_per_s', '.1f')])]
    for kind, columns in kinds:
        rows = [r for r in records if r.get('bench') == kind]
        if not rows:
            continue
        cells = [[h for h, _, _ in columns]]
        for r in rows:
            if 'error' in r:
                cells.append([str(r.get(k, '')) for _, k, _ in columns[:3]] + [f"ERROR: {r['error']}"])
            else:
                cells.append([fmt(r.get(k), s) for _, k, s in columns])
        widths = [max(len(row[i]) for row in cells if i < len(row)) for i in range(len(columns))]
        print(f"\n== {kind} ({rows[0].get('device_name', '')}; random weights) ==")
        for row in cells:
            print('  '.join(c.rjust(w) if i >= 3 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
                  + ('  ' + row[-1] if len(row) > len(widths) else ''))


# ----------------------------------------------------------------------------- loader

def bench_loader(args):
    from data import image_loader
    _, loader = image_loader(args.data, args.size, args.batch, workers=args.workers)
    batches = iter(loader)
    for _ in range(args.warmup):  # let every worker fill its prefetch queue
        next(batches)
    t0, n = time.time(), 0
    for _ in range(args.steps):
        images, _, _ = next(batches)
        n += len(images)
    dt = time.time() - t0
    result = {'bench': 'loader', 'data': args.data, 'size': args.size, 'batch': args.batch,
              'workers': args.workers, 'images_per_s': n / dt, 'cpu_threads': torch.get_num_threads()}
    print(' '.join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))
    return [result]


# ----------------------------------------------------------------------------- sample

@torch.no_grad()
def spread_weights(model, seed):
    """Random weights with a trained model's spread (unit-variance activations, O(1) AdaLN gates and logits):
    at VAR's init the gates are ~1e-5 and the logits ~uniform, which is not what sampling sees."""
    g = torch.Generator(next(model.parameters()).device).manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith('log_scale'):
            continue
        if 'emb' in name:
            p.normal_(0.0, 1.0, generator=g)
        elif p.ndim >= 2:
            p.normal_(0.0, p.shape[-1] ** -0.5, generator=g)
        else:
            p.normal_(0.0, 0.02, generator=g)


def sample_step_floors(model, batch, guided, peaks, elem_bytes):
    """Floor (s) of each of the N / P steps, and the FLOPs / bytes behind it."""
    gen_config = model.config
    R = batch * (2 if guided else 1)
    C, L, N, K = gen_config.width, gen_config.depth, gen_config.n_tokens, gen_config.vocab_size
    P = gen_config.tokens_per_step
    w, b, ada = model.matmul_param_counts()
    floors, flops_list, bytes_list = [], [], []
    for g in range(N // P):
        visible = (g + 1) * P
        flops = 2 * R * P * w + 4 * R * P * L * C * visible
        nbytes = (elem_bytes * (w + b) + elem_bytes * R * (L * 6 * C + 2 * C)  # weights, AdaLN terms
                  + elem_bytes * R * L * 2 * C * (visible + P)  # KV read of the visible positions + KV write
                  + 4 * P * (R * K + 3 * batch * K))  # float32 logits, noise, probabilities
        if g == 0:
            flops += 2 * R * ada
            nbytes += elem_bytes * ada
        floors.append(max(flops / peaks['matmul_flops_per_s'], nbytes / peaks['hbm_bytes_per_s']))
        flops_list.append(flops)
        bytes_list.append(nbytes)
    return floors, flops_list, bytes_list


def kernel_profile(fn, device):
    """CUDA kernel time of one fn() by class; None where the profiler is unavailable."""
    if device.type != 'cuda':
        return None
    try:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CUDA]) as prof:  # kernels only: fewer events to process
            fn()
            torch.cuda.synchronize(device)
        by_name = {}
        for e in prof.events():
            if getattr(e, 'device_type', None) == torch.autograd.DeviceType.CUDA:
                us = e.time_range.elapsed_us()
                count, total = by_name.get(e.name, (0, 0.0))
                by_name[e.name] = (count + 1, total + us)
        classes = {'matmul': 0.0, 'attention': 0.0, 'other': 0.0}
        for name, (_, us) in by_name.items():
            low = name.lower()
            if any(k in low for k in ('flash', 'fmha', 'attention', 'attn', 'sdpa')):
                classes['attention'] += us
            elif any(k in low for k in ('gemm', 'cutlass', 'nvjet', 'xmma', 'cublas', 'gemv', 'matmul', 'splitk')):
                classes['matmul'] += us
            else:
                classes['other'] += us
        top = sorted(by_name, key=lambda n: -by_name[n][1])[:12]
        return {'kernel_ms_by_class': {k: v / 1e3 for k, v in classes.items()},
                'n_kernels': sum(c for c, _ in by_name.values()),
                'top_kernels': [{'name': n[:120], 'count': by_name[n][0], 'ms': by_name[n][1] / 1e3} for n in top]}
    except Exception as e:  # the profiler is a diagnosis, never a reason to lose the run
        print(f"profile failed: {e!r}")
        return None


def print_profile(p):
    print(f"{'':16}kernel ms by class: " + ', '.join(f"{k} {v:.2f}" for k, v in p['kernel_ms_by_class'].items())
          + f" ({p['n_kernels']} kernels, one step)")
    print(f"{'':16}top kernels:")
    for k in p['top_kernels'][:8]:
        print(f"{'':18}{k['ms']:8.2f} ms {k['count']:6d}x  {k['name'][:90]}")


def bench_sample(args, device, peaks):
    from generator import GPT, GPTConfig
    from tokenizer import TokConfig, Tokenizer
    tok_config = TokConfig.preset(args.tok_preset)
    records = []
    for P in args.tokens_per_step:
        gen_config = GPTConfig.preset(args.preset, n_tokens=tok_config.n_tokens, vocab_size=tok_config.codebook_size,
                                      tokens_per_step=P)
        torch.manual_seed(args.seed)
        with torch.device(device):
            model = GPT(gen_config).eval()
            tok = Tokenizer(tok_config).eval()
        spread_weights(model, args.seed)
        records += bench_sample_model(args, device, peaks, model, tok)
        del model, tok
        free_memory(device)
    return records


def bench_sample_model(args, device, peaks, model, tok):
    from tokenizer import flops_per_image
    use_bf16, gen_config, tok_config = args.bf16, model.config, tok.config  # args.bf16 is resolved in main
    P = gen_config.tokens_per_step
    name = args.preset + (f'-p{P}' if P > 1 else '')  # the paper's name of the P-token model (d16-p4)
    print(f"sample: GPT {name} ({model.num_params() / 1e6:.1f}M params, N={gen_config.n_tokens}, K={gen_config.vocab_size}, "
          f"{gen_config.n_tokens // P} steps of {P} token(s)) + "
          f"tokenizer {args.tok_preset} ({tok.num_params() / 1e6:.1f}M), RANDOM weights (timing only: the samples are noise), "
          f"cfg {args.cfg}, top_k {args.top_k}, top_p {args.top_p}, {'bf16' if use_bf16 else 'float32'}, on {device}")
    decoder_flops = flops_per_image(tok_config, 1) - flops_per_image(tok_config, 0)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)
    records = []
    for bi, B in enumerate(args.batch):
        g = torch.Generator(device).manual_seed(args.seed)
        labels = torch.randint(gen_config.num_classes, (B,), device=device, generator=g)
        floors, step_flops, step_bytes = sample_step_floors(model, B, args.cfg != 0, peaks, 2 if use_bf16 else 4)
        gen_floor, decode_floor = sum(floors), B * decoder_flops / peaks['matmul_flops_per_s']
        print(f"\nbatch {B}: generator floor {gen_floor * 1e3:.2f} ms (step 0 {floors[0] * 1e3:.3f} ms .. step "
              f"{len(floors) - 1} {floors[-1] * 1e3:.3f} ms; {sum(step_bytes) / 1e9:.1f} GB, "
              f"{sum(step_flops) / 1e12:.2f} TFLOP), "
              f"decode floor {decode_floor * 1e3:.2f} ms ({B * decoder_flops / 1e12:.2f} TFLOP) -> at best "
              f"{B / (gen_floor + decode_floor):.0f} images/s end to end")
        with autocast:  # the decoder's time does not depend on the generator variant: measured once
            tokens = torch.randint(gen_config.vocab_size, (B, gen_config.n_tokens), device=device, generator=g)
            decode_s = statistics.median(timed(lambda: tok.decode(tokens), device, args.reps, warmup=1))
            if args.compile:  # the fast+compile row decodes as sample.py --compile does
                compiled_decode = torch.compile(tok.decode)
                decode_compiled_s = statistics.median(timed(lambda: compiled_decode(tokens), device, args.reps, warmup=2))
        base = {'bench': 'sample', 'model': f"{name}/{args.tok_preset}", 'tokens_per_step': P, 'batch': B, 'cfg': args.cfg,
                'top_k': args.top_k, 'top_p': args.top_p, 'bf16': use_bf16, 'random_weights': True, **peaks,
                'gen_floor_ms': gen_floor * 1e3, 'decode_floor_ms': decode_floor * 1e3, 'decode_ms': decode_s * 1e3,
                'decode_mfu': B * decoder_flops / decode_s / peaks['matmul_flops_per_s'],
                'floor_images_per_s': B / (gen_floor + decode_floor), 'step_floor_ms': [f * 1e3 for f in floors]}
        for variant in ['slow', 'fast'] + (['fast+compile'] if args.compile else []):
            record = {**base, 'variant': variant, 'decode': 'eager'}
            decode = tok.decode
            if variant == 'fast+compile':
                decode = compiled_decode
                record.update(decode='compiled', decode_ms=decode_compiled_s * 1e3,
                              decode_mfu=B * decoder_flops / decode_compiled_s / peaks['matmul_flops_per_s'])
            try:
                record.update(sample_variant(variant, model, tok, labels, g, args, autocast, use_bf16, floors, decode))
                if args.check and bi == 0 and variant in ('fast', 'fast+compile'):
                    record.update(check_fast_path(model, labels, args, use_bf16, autocast, variant == 'fast+compile'))
                record.update(gen_over_floor=record['gen_ms'] / record['gen_floor_ms'])
            except Exception as e:
                traceback.print_exc()
                record['error'] = error_text(e)
            free_memory(device)
            records.append(record)
            write_json(args.json, [record])  # record by record: a run cut short keeps what it measured
            print_sample_line(record)
    return records


def print_sample_line(r):
    if 'error' in r:
        print(f"  {r['variant']:>12}: ERROR {r['error']}")
        return
    line = (f"  {r['variant']:>12}: {r['images_per_s']:.0f} images/s end to end, generate {r['gen_ms']:.1f} ms "
            f"({r['gen_over_floor']:.2f}x its floor")
    if 'worst_step_over_floor' in r:
        line += f"; worst step {r['worst_step']} at {r['worst_step_over_floor']:.2f}x, {r['steps_over_2x_floor']} steps over 2x"
    line += f"), decode ({r['decode']}) {r['decode_ms']:.1f} ms, peak {fmt(r['peak_mem_gb'], '.2f')} GB, first call {r['first_call_s']:.1f} s"
    if 'sample_py_images_per_s' in r:
        line += f"\n{'':16}sample.py's loop: {r['sample_py_images_per_s']:.0f} images/s"
    if 'check_logits_rel_err' in r:
        line += (f"\n{'':16}check {'ok' if r['check_ok'] else 'FAILED'}: logits vs float32 teacher-forced forward rel err "
                 f"{r['check_logits_rel_err']:.2e} (slow path {r['check_slow_logits_rel_err']:.2e}); tokens equal to the "
                 f"slow path's, same seed: sampled {r['check_sampled_token_match']:.1%}, greedy "
                 f"{r['check_greedy_token_match']:.1%} (rows {r['check_greedy_rows_equal']:.1%})")
    print(line)
    if 'profile' in r:
        print_profile(r['profile'])


def sample_variant(variant, model, tok, labels, g, args, autocast, use_bf16, floors, decode):
    """Times one generator variant (and `decode`, tok.decode or its compiled twin, end to end) at one batch size;
    everything it builds is freed when it returns."""
    from fast_sample import FastSampler
    device, B = labels.device, len(labels)
    steps = model.config.n_tokens // model.config.tokens_per_step
    sampling = dict(temperature=1.0, top_k=args.top_k, top_p=args.top_p)
    dtype = torch.bfloat16 if use_bf16 else torch.float32
    out = {}
    reset_peak(device)
    t0 = time.perf_counter()
    if variant == 'slow':
        def generate():
            return model.generate(labels, cfg_scale=args.cfg, generator=g, **sampling)
    else:
        sampler = FastSampler(model, B, args.cfg != 0, **sampling, dtype=dtype, compile=variant == 'fast+compile')

        def generate(events=None):
            return sampler.generate(labels, cfg_scale=args.cfg, generator=g, events=events)
    with autocast:
        generate()  # the fast path copies its weights, captures its graphs (and compiles) here
        sync(device)
        out['first_call_s'] = time.perf_counter() - t0
        gen_s = statistics.median(timed(generate, device, args.reps, warmup=1))
        e2e_s = statistics.median(timed(lambda: decode(generate()), device, args.reps, warmup=1))
    out['peak_mem_gb'] = peak_gb(device)
    out.update(gen_ms=gen_s * 1e3, ms_per_step=gen_s * 1e3 / steps, e2e_ms=e2e_s * 1e3, images_per_s=B / e2e_s,
               gen_images_per_s=B / gen_s)
    if variant != 'slow' and device.type == 'cuda':  # each step alone: events between the graph replays
        runs = []
        for _ in range(3):
            events = [torch.cuda.Event(enable_timing=True) for _ in range(steps + 1)]
            generate(events)
            events[-1].synchronize()
            runs.append([a.elapsed_time(b) for a, b in zip(events[:-1], events[1:])])
        step_ms = [statistics.median(col) for col in zip(*runs)]
        ratios = [ms / 1e3 / f for ms, f in zip(step_ms, floors)]
        worst = max(range(steps), key=ratios.__getitem__)
        out.update(step_ms=step_ms, step_over_floor=ratios, worst_step=worst, worst_step_over_floor=ratios[worst],
                   median_step_over_floor=statistics.median(ratios), steps_over_2x_floor=sum(r > 2 for r in ratios))
    if args.profile and variant != 'slow':
        def middle_step():  # run eagerly, outside its graph, so that the profiler sees each kernel
            with torch.no_grad(), torch.autocast(device.type, enabled=False):
                sampler._step(steps // 2)
        if prof := kernel_profile(middle_step, device):
            out['profile'] = prof
    if variant != 'slow':
        out['sample_py_images_per_s'] = sample_py_throughput(model, tok, B, args, use_bf16, variant == 'fast+compile')
    return out


def sample_py_throughput(model, tok, B, args, use_bf16, compile, n_batches=6):
    """Images/s of sample.py's own loop (sample.sample_batches: generate, decode, uint8 images to the host; on
    CUDA batch b decodes and copies on a side stream while batch b + 1 samples) over n_batches of B, after one
    untimed pass."""
    import numpy as np
    import fast_sample
    import sample
    labels = np.random.default_rng(args.seed).integers(model.config.num_classes, size=n_batches * B)

    def run():
        for _ in sample.sample_batches(model, tok, labels, B, args.seed, model.config.n_tokens, args.cfg, top_k=args.top_k,
                                       top_p=args.top_p, bf16=use_bf16, compile=compile):
            pass
    run()
    t0 = time.perf_counter()
    run()  # ends on the last batch's copy to the host: no sync needed
    seconds = time.perf_counter() - t0
    fast_sample.SAMPLERS.pop(model, None)  # its KV cache and graphs
    return n_batches * B / seconds


def check_fast_path(model, labels, args, use_bf16, autocast, compile):
    """Correctness at this batch size. Each path's logits against a float32 teacher-forced forward pass over its own
    tokens (relative error; the slow path's is the precision's own noise, the fast path must stay within 2x), and
    fast vs slow tokens for the same seed, sampled and greedy (equal in float32; in bf16 near-ties flip and the
    sequences then diverge, so these fractions are information, not pass/fail)."""
    from fast_sample import FastSampler
    B, guided = len(labels), args.cfg != 0
    dtype = torch.bfloat16 if use_bf16 else torch.float32
    sampling = dict(top_k=args.top_k, top_p=args.top_p)

    def seeded():
        return torch.Generator(labels.device).manual_seed(1)

    def rel_err_vs_forward(tokens, logits):  # against float32: compare with higher precision
        with torch.autocast(labels.device.type, enabled=False):
            ref = model(tokens, labels)
            if guided:
                s = model.cfg_schedule(args.cfg)[None, :, None]
                ref = (1 + s) * ref - s * model(tokens, torch.full_like(labels, model.config.num_classes))
        return ((logits - ref).norm() / ref.norm()).item()

    sampler = FastSampler(model, B, guided, **sampling, return_logits=True, dtype=dtype, compile=compile)
    fast_tokens, fast_logits = sampler.generate(labels, cfg_scale=args.cfg, generator=seeded())
    del sampler
    fast_rel = rel_err_vs_forward(fast_tokens, fast_logits)
    with autocast:
        slow_tokens, slow_logits = model.generate(labels, cfg_scale=args.cfg, generator=seeded(), return_logits=True,
                                                  **sampling)
    slow_rel = rel_err_vs_forward(slow_tokens, slow_logits)
    del fast_logits, slow_logits
    fast_greedy = FastSampler(model, B, guided, top_k=1, dtype=dtype, compile=compile).generate(labels, cfg_scale=args.cfg)
    with autocast:
        slow_greedy = model.generate(labels, cfg_scale=args.cfg, top_k=1)
    greedy_equal = fast_greedy == slow_greedy
    ok = math.isfinite(fast_rel) and fast_rel <= 2 * slow_rel + (1e-3 if use_bf16 else 1e-5)
    if not ok:
        print(f"CHECK FAILED: the fast path's logits differ from a teacher-forced forward pass by {fast_rel:.3e} "
              f"(the reference loop's by {slow_rel:.3e})")
    return {'check_logits_rel_err': fast_rel, 'check_slow_logits_rel_err': slow_rel, 'check_ok': ok,
            'check_sampled_token_match': (fast_tokens == slow_tokens).float().mean().item(),
            'check_greedy_token_match': greedy_equal.float().mean().item(),
            'check_greedy_rows_equal': greedy_equal.all(1).float().mean().item()}


# ----------------------------------------------------------------------------- training steps

def run_train_variants(args, device, peaks, build, model_name, bench):
    """build(B, compile) -> (step function, counted FLOPs per step, extra fields); time each variant and batch."""
    records = []
    for variant in ['eager'] + (['compile'] if args.compile else []):
        for B in args.batch:
            record = {'bench': bench, 'model': model_name, 'variant': variant, 'batch': B, 'random_weights': True, **peaks}
            try:
                reset_peak(device)
                step, flops, extra = build(B, variant == 'compile')
                record.update(extra)
                t0 = time.perf_counter()
                for _ in range(args.warmup):
                    step()
                sync(device)
                record['warmup_s'] = time.perf_counter() - t0
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    step()
                sync(device)
                dt = (time.perf_counter() - t0) / args.steps
                record.update(ms_per_step=dt * 1e3, images_per_s=B / dt, flops_per_step=flops,
                              mfu=flops / dt / peaks['matmul_flops_per_s'], peak_mem_gb=peak_gb(device))
                if 'tokens_per_step' in record:
                    record['tokens_per_s'] = record['tokens_per_step'] / dt
                if 'tokenizer_flops_per_step' in record:
                    record['mfu_tokenizer_only'] = record['tokenizer_flops_per_step'] / dt / peaks['matmul_flops_per_s']
                if args.profile and (prof := kernel_profile(step, device)):
                    record['profile'] = prof
                del step
            except Exception as e:
                traceback.print_exc()
                record['error'] = error_text(e)
            free_memory(device)
            records.append(record)
            write_json(args.json, [record])
            print(f"  {variant:>8} batch {B}: " + ('ERROR ' + record['error'] if 'error' in record else
                  f"{record['images_per_s']:.1f} images/s, {record['ms_per_step']:.1f} ms/step, MFU {record['mfu']:.1%}, "
                  f"peak {fmt(record['peak_mem_gb'], '.2f')} GB (first {args.warmup} steps {record['warmup_s']:.1f} s)"))
            if 'profile' in record:
                print_profile(record['profile'])
    return records


def bench_train_gen(args, device, peaks):
    from generator import GPT, GPTConfig, drop_labels
    use_bf16 = args.bf16  # resolved in main
    gen_config = GPTConfig.preset(args.preset)
    with torch.device('meta'):
        flops_per_sample = GPT(gen_config).train_flops_per_sample()
    print(f"train_gen: GPT {args.preset} (N={gen_config.n_tokens}, K={gen_config.vocab_size}), random weights and tokens, "
          f"{'bf16' if use_bf16 else 'float32'}, on {device}")

    def build(B, compile):
        torch.manual_seed(args.seed)
        with torch.device(device):
            model = GPT(gen_config)
        optimizer = common.adamw(model, 1e-4, (0.9, 0.95), 0.05, model.no_weight_decay())
        train_model = torch.compile(model) if compile else model
        g = torch.Generator(device).manual_seed(args.seed)
        batches = [(torch.randint(gen_config.vocab_size, (B, gen_config.n_tokens), device=device, generator=g),
                    drop_labels(torch.randint(gen_config.num_classes, (B,), device=device, generator=g),
                                gen_config.num_classes, 0.1, g))
                   for _ in range(4)]
        state = {'i': 0}

        def step():  # train_gen.py's step
            idx, labels = batches[state['i'] % len(batches)]
            state['i'] += 1
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                _, token_loss = train_model(idx, labels, with_loss=True)
            loss = token_loss.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
            optimizer.step()

        return step, flops_per_sample * B, {'tokens_per_step': B * gen_config.n_tokens, 'bf16': use_bf16}

    return run_train_variants(args, device, peaks, build, args.preset, 'train_gen')


def conv_flops(module, *inputs):
    """Multiply-add FLOPs (x2) of every Conv2d in one forward call, counted by hooks."""
    total = [0]

    def hook(m, _, out):
        total[0] += 2 * out.numel() * (m.in_channels // m.groups) * math.prod(m.kernel_size)
    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            module(*inputs)
    finally:
        for h in handles:
            h.remove()
    return total[0]


def make_lpips(device, resize=None):
    """LPIPS with its real weights when installed, otherwise random ones written to a temporary file (timing only);
    resize: train_tok.py's --lpips_resize."""
    from losses import LPIPS, LPIPS_TAP_CHANNELS, build_vgg16_features
    try:
        return LPIPS(resize=resize).to(device), 'real'
    except FileNotFoundError:
        state = {f'features.{k}': v for k, v in build_vgg16_features().state_dict().items()}
        state.update({f'lin{i}.model.1.weight': torch.rand(1, c, 1, 1) for i, c in enumerate(LPIPS_TAP_CHANNELS)})
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, 'random_lpips.pth')
            torch.save(state, path)
            return LPIPS(path, resize=resize).to(device), 'random (weights not installed)'


def bench_train_tok(args, device, peaks):
    from dct import lowpass
    from losses import LeCamRegularizer, NLayerDiscriminator, hinge_d_loss, hinge_g_loss
    from tokenizer import TokConfig, Tokenizer, flops_per_image
    use_bf16 = args.bf16  # resolved in main
    tok_config = TokConfig.preset(args.preset)
    lpips, lpips_source = make_lpips(device, args.lpips_resize) if args.lpips else (None, 'off')
    size = tok_config.image_size
    one = torch.rand(1, 3, size, size, device=device) * 2 - 1
    f_lpips = conv_flops(lpips, one, one) if lpips is not None else 0
    f_disc = conv_flops(NLayerDiscriminator().to(device), one) if args.gan else 0
    print(f"train_tok: tokenizer {args.preset} ({size} px, N={tok_config.n_tokens}, K={tok_config.codebook_size}), random weights and "
          f"images, LPIPS weights {lpips_source}{f' at {args.lpips_resize} px' if args.lpips_resize else ''}, GAN {'on' if args.gan else 'off'}, "
          f"{'bf16' if use_bf16 else 'float32'}, on {device}")

    def build(B, compile):
        torch.manual_seed(args.seed)
        with torch.device(device):
            model = Tokenizer(tok_config)
            disc = NLayerDiscriminator() if args.gan else None
            lecam = LeCamRegularizer() if args.gan else None
        ema_model = copy.deepcopy(model).eval().requires_grad_(False)
        optimizer = common.adamw(model, 1e-4, (0.9, 0.999), 1e-4, model.no_weight_decay())
        disc_optimizer = common.adamw(disc, 1e-4, (0.9, 0.999), 1e-4) if args.gan else None
        compiled = torch.compile if compile else (lambda module: module)  # as train_tok.py: the losses too
        train_model, disc_net = compiled(model), compiled(disc) if args.gan else None
        lpips_loss = compiled(lpips) if lpips is not None else None
        g = torch.Generator(device).manual_seed(args.seed)
        images = [torch.rand(B, 3, size, size, device=device, generator=g) * 2 - 1 for _ in range(2)]
        state = {'i': 0}
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)

        def step():  # train_tok.py's step after --disc_start (dead-code restarts, every 500 steps, left out)
            x = images[state['i'] % len(images)]
            state['i'] += 1
            prefix = torch.randint(1, tok_config.n_tokens + 1, (B,), device=device, generator=g)
            flip = torch.rand(B, device=device, generator=g) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            target = lowpass(x, model.omegas[prefix - 1])
            with autocast:
                recon, vq_loss, _ = train_model(x, prefix)
                recon = recon.float()
                loss = F.mse_loss(recon, target) + vq_loss
                if lpips is not None:
                    loss = loss + lpips_loss(recon, target).mean()
                if args.gan:
                    disc.requires_grad_(False)
                    loss = loss + 0.1 * hinge_g_loss(disc_net(recon))
                    disc.requires_grad_(True)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            common.ema_update(ema_model, model, 0.999)
            if args.gan:
                with autocast:
                    logits = disc_net(torch.cat([target, recon.detach()])).float()
                    real, fake = logits.chunk(2)
                    d_loss = hinge_d_loss(real, fake) + 0.001 * lecam(real, fake)
                disc_optimizer.zero_grad(set_to_none=True)
                d_loss.backward()
                torch.nn.utils.clip_grad_norm_(disc.parameters(), 1.0)
                disc_optimizer.step()

        tok_flops = 3 * flops_per_image(tok_config) * B
        flops = tok_flops + 1.5 * f_lpips * B + 8 * f_disc * B
        return step, flops, {'tokenizer_flops_per_step': tok_flops, 'lpips_weights': lpips_source,
                             'lpips_resize': args.lpips_resize, 'gan': args.gan,
                             'lpips_fwd_flops_per_pair': f_lpips, 'disc_fwd_flops_per_image': f_disc, 'bf16': use_bf16}

    return run_train_variants(args, device, peaks, build, args.preset, 'train_tok')


# ----------------------------------------------------------------------------- main

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=common.HelpFormatter)
    sub = parser.add_subparsers(dest='what', required=True)

    p = sub.add_parser('loader', formatter_class=common.HelpFormatter, help='data loader images/s')
    p.add_argument('--data', required=True)
    p.add_argument('--size', type=int, default=256)
    p.add_argument('--batch', type=int, default=256)
    p.add_argument('--workers', type=int, default=8)
    p.add_argument('--warmup', type=int, default=5)
    p.add_argument('--steps', type=int, default=30)

    def device_args(p):
        p.add_argument('--device', default='auto')
        p.add_argument('--bf16', action=argparse.BooleanOptionalAction, default=None, help='default: on with CUDA')
        p.add_argument('--compile', action='store_true', help='also time a torch.compile variant')
        p.add_argument('--seed', type=int, default=0)

    p = sub.add_parser('sample', formatter_class=common.HelpFormatter, help='sampling: reference loop vs fast_sample.FastSampler, end to end with tokenizer decode')
    p.add_argument('--preset', default='d16', help='generator preset')
    p.add_argument('--tok_preset', default='titok_b64', help='tokenizer preset (sets N and K of the generator)')
    p.add_argument('--batch', type=int, nargs='+', default=[64, 256])
    p.add_argument('--tokens_per_step', type=int, nargs='+', default=[1],
                   help="P tokens per sampling step, one model each (1 4: the paper's d16 against d16-p4)")
    p.add_argument('--cfg', type=float, default=1.5, help='guidance scale; 0 turns CFG (the doubled batch) off')
    p.add_argument('--top_k', type=int, default=0)
    p.add_argument('--top_p', type=float, default=0.0)
    p.add_argument('--reps', type=int, default=5, help='timed calls per measurement (median)')
    p.add_argument('--check', action=argparse.BooleanOptionalAction, default=True,
                   help='check the fast path against the reference at the first batch size')
    p.add_argument('--profile', action='store_true',
                   help="kernel time by class of the fast paths' middle step, run outside its CUDA graph (CUDA)")
    device_args(p)

    for name, default_preset, default_batch in (('train_gen', 'd16', 256), ('train_tok', 'titok_b64', 64)):
        p = sub.add_parser(name, formatter_class=common.HelpFormatter, help=f'{name}.py training steps')
        p.add_argument('--preset', default=default_preset)
        p.add_argument('--batch', type=int, nargs='+', default=[default_batch])
        p.add_argument('--warmup', type=int, default=3, help='untimed steps first (compilation happens here)')
        p.add_argument('--steps', type=int, default=10, help='timed steps')
        if name == 'train_tok':
            p.add_argument('--lpips', action=argparse.BooleanOptionalAction, default=True)
            p.add_argument('--lpips_resize', type=int, help="train_tok.py's: upsample smaller images to this size "
                           'before LPIPS (scripts/cifar10.sh: 128)')
            p.add_argument('--gan', action=argparse.BooleanOptionalAction, default=True)
        p.add_argument('--profile', action='store_true', help='kernel time by class of one timed step (CUDA)')
        device_args(p)

    p = sub.add_parser('table', formatter_class=common.HelpFormatter, help='print the table of a JSON-lines file written by --json')
    for p_ in sub.choices.values():
        p_.add_argument('--json', help='append the results to this JSON-lines file' if p_ is not p else 'file to read')
    args = parser.parse_args(argv)

    if args.what == 'table':
        if not args.json:
            raise SystemExit('table needs --json FILE')
        with open(args.json) as f:
            print_table([json.loads(line) for line in f if line.strip()])
        return
    if args.what == 'loader':
        records = bench_loader(args)
        write_json(args.json, records)
    else:
        device = pick_device(args.device)
        args.bf16 = common.bf16_autocast_on(args.bf16, device)
        peaks = measure_peaks(device)
        records = {'sample': bench_sample, 'train_gen': bench_train_gen, 'train_tok': bench_train_tok}[args.what](
            args, device, peaks)
    print_table(records)
    if any('error' in r or r.get('check_ok') is False for r in records):
        sys.exit(1)


if __name__ == '__main__':
    main()
