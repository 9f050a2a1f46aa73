"""
VAR's own sampler against this repo's on one GPU, in one run: the speed column of the paper's Table 2
(relative sampling time, SpectralAR-d16 1.0 against VAR-d16 0.6).

    git clone https://github.com/FoundationVision/VAR .stage/VAR    # on a machine with internet; copy it over if the GPU has none
    python scripts/var_speed.py --var_repo .stage/VAR --batches 16 64 256 --json var_speed.jsonl

VAR's side runs VAR's own code, imported from --var_repo (none of it is copied into this repository):
models.build_vae_var as its demo_sample.ipynb builds the ImageNet 256 px models (depth 16, patch_nums
1 2 3 4 5 6 8 10 13 16: 680 tokens in 10 steps, 4096 codes, the VQVAE with ch 160), random weights (VAR's
init_weights; the VQVAE, which the demo loads from a checkpoint, gets torch's default init), then
VAR.autoregressive_infer_cfg at cfg 1.5, top_k 900, top_p 0.96, more_smooth False, under fp16 autocast and
inference_mode with TF32 on, as the demo. The call returns images: its time includes the VQVAE decode.
VAR's optional kernels (flash_attn's attention and fused MLP, xformers' attention) run when installed; VAR
falls back to torch's SDPA and plain layers when they are not. The output says which ran. VAR's models/var.py
imports huggingface_hub only for VARHF (not used here): a stand-in is put in its place when it is missing.

Our side is bench.py's sample benchmark (bench.bench_sample) for --preset at each --tokens_per_step (d16 and
d16-p4: 64 tokens in 64 or 16 steps) with the titok_b64 decoder, the same cfg / top_k / top_p, bf16 autocast:
the reference loop GPT.generate ('slow', an eager KV-cache loop like VAR's), fast_sample.FastSampler ('fast',
sample.py's default) and with --compile sample.py --compile's path ('fast+compile').

Timing, both sides: one untimed first call, one warm-up call, then the median of --iters timed calls (CUDA
events: bench.timed). ms per batch is generation + decode to pixels, the images left on the GPU. Printed last:
for each batch and our variant, the ms of each model, ours / VAR, and the paper's convention (time relative
to ours at the first --tokens_per_step, d16 = 1.0). --json appends every record as a JSON line.

--device cpu with --var_depth, --var_patch_nums and the tiny presets is a smoke test (tests/test_var_speed.py),
not a measurement.
"""
import argparse
import os
import statistics
import subprocess
import sys
import time
import traceback
import types

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

import bench  # noqa: E402
import common  # noqa: E402

VAR_PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)  # VAR's ImageNet 256 px schedule: 680 tokens in 10 steps


def import_var(var_repo):
    """VAR's models.build_vae_var, imported from the checkout at var_repo."""
    if not os.path.isfile(os.path.join(var_repo, 'models', 'var.py')):
        raise common.UserError(f"--var_repo {var_repo}: no models/var.py there; give a checkout of "
                               f"https://github.com/FoundationVision/VAR")
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:  # var.py needs the name for VARHF's base class only
        hub = types.ModuleType('huggingface_hub')
        hub.PyTorchModelHubMixin = type('PyTorchModelHubMixin', (), {})
        sys.modules['huggingface_hub'] = hub
    sys.path.insert(0, os.path.abspath(var_repo))
    from models import build_vae_var
    return build_vae_var


def var_commit(var_repo):
    """The checkout's commit when it is a clone with its own .git (git would report the commit of a repository
    around a plain copy)."""
    if not os.path.exists(os.path.join(var_repo, '.git')):
        return None
    try:
        return subprocess.run(['git', '-C', var_repo, 'rev-parse', 'HEAD'], capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except OSError:
        return None


def build_var(build_vae_var, depth, patch_nums, device):
    """VAR-d{depth} and its VQVAE as VAR's demo builds them, random weights. build_vae_var turns off
    reset_parameters of torch's layer classes for the whole process (the demo loads checkpoints next): they are
    put back, so that our models built later initialise as always, and the VQVAE's layers are initialised with
    them (left alone they hold uninitialised memory, possibly NaN, which would break the sampling)."""
    layer_classes = [c for c in vars(nn).values() if isinstance(c, type) and issubclass(c, nn.Module)]
    own_init = {c: c.__dict__.get('reset_parameters') for c in layer_classes}
    try:
        vae, var = build_vae_var(device=device, patch_nums=patch_nums, V=4096, Cvae=32, ch=160, share_quant_resi=4,
                                 num_classes=1000, depth=depth, shared_aln=False, attn_l2_norm=True,
                                 flash_if_available=True, fused_if_available=True)
    finally:
        turned_off = tuple(c for c in layer_classes if c.__dict__.get('reset_parameters') is not own_init[c])
        for c in turned_off:
            if own_init[c] is None:
                delattr(c, 'reset_parameters')
            else:
                c.reset_parameters = own_init[c]
    with torch.no_grad():
        for m in vae.modules():
            if isinstance(m, turned_off):
                m.reset_parameters()
    vae.eval().requires_grad_(False)
    var.eval().requires_grad_(False)  # eval: no drop path
    var.rng = torch.Generator(device)  # VAR makes it on its own idea of the device (CUDA whenever there is one)
    return vae, var


def var_kernels():
    """Which of VAR's optional kernels its blocks found at import."""
    import models.basic_var as basic_var
    attention = ('flash_attn' if basic_var.flash_attn_func is not None else
                 'xformers' if basic_var.memory_efficient_attention is not None else 'torch SDPA (fallback)')
    return {'var_attention': attention, 'var_fused_mlp': basic_var.fused_mlp_func is not None}


def vae_decoder_flops(vae, patch_nums, device):
    """Conv FLOPs of one VQVAE decode (VAR's f_hat to pixels), counted by bench.conv_flops' hooks."""
    class Decode(nn.Module):
        def __init__(self):
            super().__init__()
            self.vae = vae

        def forward(self, f_hat):
            return self.vae.fhat_to_img(f_hat)
    side = patch_nums[-1]
    return bench.conv_flops(Decode(), torch.zeros(1, vae.Cvae, side, side, device=device))


def bench_var(build_vae_var, args, device, peaks):
    """VAR.autoregressive_infer_cfg at each batch: one record per batch."""
    patch_nums = tuple(args.var_patch_nums)
    vae, var = build_var(build_vae_var, args.var_depth, patch_nums, device)
    name = f'VAR-d{args.var_depth}'
    use_fp16 = args.var_fp16
    base = {'bench': 'var_sample', 'model': name, 'variant': 'VAR', 'var_commit': var_commit(args.var_repo),
            'patch_nums': list(patch_nums), 'n_tokens': sum(p * p for p in patch_nums), 'steps': len(patch_nums),
            'image_size': 16 * patch_nums[-1], 'params': sum(p.numel() for p in var.parameters()),
            'vae_params': sum(p.numel() for p in vae.parameters()),
            'decoder_flops_per_image': vae_decoder_flops(vae, patch_nums, device), 'cfg': args.cfg,
            'top_k': args.top_k, 'top_p': args.top_p, 'more_smooth': False, 'fp16': use_fp16, 'random_weights': True,
            **var_kernels(), **peaks}
    print(f"\nVAR: {name} ({base['params'] / 1e6:.1f}M params) + VQVAE ({base['vae_params'] / 1e6:.1f}M, decoder "
          f"{base['decoder_flops_per_image'] / 1e9:.0f} GFLOP per image), {base['n_tokens']} tokens in {base['steps']} "
          f"steps, {base['image_size']} px, RANDOM weights, cfg {args.cfg}, top_k {args.top_k}, top_p {args.top_p}, "
          f"{'fp16' if use_fp16 else 'float32'}, attention: {base['var_attention']}, fused MLP: {base['var_fused_mlp']}, "
          f"VAR commit {base['var_commit']}, on {device}")
    autocast = torch.autocast(device.type, dtype=torch.float16, enabled=use_fp16)
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # the demo's "run faster"
    records = []
    try:
        for B in args.batches:
            g = torch.Generator(device).manual_seed(args.seed)
            labels = torch.randint(1000, (B,), device=device, generator=g)

            def sample():
                with torch.inference_mode(), autocast:
                    return var.autoregressive_infer_cfg(B=B, label_B=labels, g_seed=args.seed, cfg=args.cfg,
                                                        top_k=args.top_k, top_p=args.top_p, more_smooth=False)
            record = {**base, 'batch': B}
            try:
                bench.reset_peak(device)
                t0 = time.perf_counter()
                images = sample()
                bench.sync(device)
                record['first_call_s'] = time.perf_counter() - t0
                record['finite'] = bool(images.isfinite().all())
                del images
                seconds = statistics.median(bench.timed(sample, device, args.iters, warmup=1))
                record.update(e2e_ms=seconds * 1e3, images_per_s=B / seconds, peak_mem_gb=bench.peak_gb(device))
                print(f"  {name} batch {B}: {record['images_per_s']:.0f} images/s, {record['e2e_ms']:.1f} ms per batch "
                      f"(sampling + VQVAE decode), peak {bench.fmt(record['peak_mem_gb'], '.2f')} GB, first call "
                      f"{record['first_call_s']:.1f} s")
            except Exception as e:  # e.g. out of memory at the largest batch: the other batches still count
                traceback.print_exc()
                record['error'] = bench.error_text(e)
                print(f"  {name} batch {B}: ERROR {record['error']}")
            bench.free_memory(device)
            records.append(record)
            bench.write_json(args.json, [record])
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    del vae, var
    bench.free_memory(device)
    return records


def ours_name(preset, P):
    return preset + (f'-p{P}' if P > 1 else '')


def comparison(var_records, our_records, args, peaks):
    """One record per (batch, our variant): ms of each model, ours / VAR, and times relative to ours at the first
    --tokens_per_step."""
    var_ms = {r['batch']: r['e2e_ms'] for r in var_records if 'error' not in r}
    ours = {}
    for r in our_records:
        if 'error' not in r:
            ours.setdefault((r['batch'], r['variant']), {})[ours_name(args.preset, r['tokens_per_step'])] = r['e2e_ms']
    var_name = var_records[0]['model']
    reference = ours_name(args.preset, args.tokens_per_step[0])
    rows = []
    for (B, variant), ms in sorted(ours.items(), key=lambda item: (item[0][0], ['slow', 'fast', 'fast+compile'].index(item[0][1]))):
        row = {'bench': 'var_speed', 'batch': B, 'variant': variant, 'var_model': var_name, 'var_ms': var_ms.get(B),
               'ours_ms': ms, 'reference': reference, 'device_name': peaks['device_name'],
               'torch': peaks['torch']}
        if row['var_ms'] is not None:
            row['ours_over_var'] = {m: t / row['var_ms'] for m, t in ms.items()}
        if reference in ms:
            times = {var_name: row['var_ms'], **ms}
            row['relative_to_reference'] = {m: t / ms[reference] for m, t in times.items() if t is not None}
        rows.append(row)
    return rows


def print_comparison(rows, args):
    if not rows:
        print('\nno comparison: none of our measurements succeeded')
        return
    models = [ours_name(args.preset, P) for P in args.tokens_per_step]
    var_name, reference = rows[0]['var_model'], rows[0]['reference']
    header = (['batch', 'ours', f'{var_name} ms'] + [f'{m} ms' for m in models] + [f'{m}/VAR' for m in models]
              + [f'{m} rel' for m in [var_name] + models[1:]])
    cells = [header]
    for r in rows:
        ratios, relative = r.get('ours_over_var', {}), r.get('relative_to_reference', {})
        cells.append([str(r['batch']), r['variant'], bench.fmt(r['var_ms'], '.1f')]
                     + [bench.fmt(r['ours_ms'].get(m), '.1f') for m in models]
                     + [bench.fmt(ratios.get(m), '.3g') for m in models]
                     + [bench.fmt(relative.get(m), '.3g') for m in [var_name] + models[1:]])
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(f"\n== {var_name} (VAR's own sampler) vs ours, {rows[0]['device_name']}, torch {rows[0]['torch']}; random weights; "
          f"ms per batch = sampling + decode to pixels; 'rel': time relative to {reference} = 1.0 (Table 2's convention) ==")
    for row in cells:
        print('  '.join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=common.HelpFormatter)
    parser.add_argument('--var_repo', required=True, help='a checkout of https://github.com/FoundationVision/VAR')
    parser.add_argument('--batches', type=int, nargs='+', default=[16, 64, 256])
    parser.add_argument('--iters', type=int, default=5, help='timed calls per measurement (median), each side')
    parser.add_argument('--cfg', type=float, default=1.5)
    parser.add_argument('--top_k', type=int, default=900)
    parser.add_argument('--top_p', type=float, default=0.96)
    parser.add_argument('--var_depth', type=int, default=16, help='VAR-d16; smaller only for the CPU smoke test')
    parser.add_argument('--var_patch_nums', type=int, nargs='+', default=list(VAR_PATCH_NUMS),
                        help="VAR's token-map sides (its 256 px schedule); shorter only for the CPU smoke test")
    parser.add_argument('--var_fp16', action=argparse.BooleanOptionalAction, default=None,
                        help="VAR under fp16 autocast, as its demo (default: on with CUDA)")
    parser.add_argument('--preset', default='d16', help='our generator preset')
    parser.add_argument('--tok_preset', default='titok_b64', help='our tokenizer preset')
    parser.add_argument('--tokens_per_step', type=int, nargs='+', default=[1, 4],
                        help='our models: P tokens per step each (1 4: d16 and d16-p4); the first is the reference')
    parser.add_argument('--bf16', action=argparse.BooleanOptionalAction, default=None,
                        help='ours under bf16 autocast (default: on with CUDA)')
    parser.add_argument('--compile', action='store_true', help="also time ours on sample.py --compile's path")
    parser.add_argument('--device', default='auto')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--json', help='append every record to this JSON-lines file')
    args = parser.parse_args(argv)
    if args.iters < 1:
        parser.error('--iters must be at least 1')

    build_vae_var = import_var(args.var_repo)  # a wrong path stops the run before any measurement
    device = bench.pick_device(args.device)
    args.var_fp16 = device.type == 'cuda' if args.var_fp16 is None else args.var_fp16
    bench_args = argparse.Namespace(
        preset=args.preset, tok_preset=args.tok_preset, tokens_per_step=args.tokens_per_step, batch=args.batches,
        cfg=args.cfg, top_k=args.top_k, top_p=args.top_p, reps=args.iters, compile=args.compile, check=False,
        profile=False, seed=args.seed, json=args.json, bf16=common.bf16_autocast_on(args.bf16, device))
    peaks = bench.measure_peaks(device)
    var_records = bench_var(build_vae_var, args, device, peaks)
    our_records = bench.bench_sample(bench_args, device, peaks)
    rows = comparison(var_records, our_records, args, peaks)
    bench.write_json(args.json, rows)
    bench.print_table(our_records)
    print_comparison(rows, args)
    if any('error' in r for r in var_records + our_records):
        sys.exit(1)


if __name__ == '__main__':
    common.exit_on_user_error()
    main()
