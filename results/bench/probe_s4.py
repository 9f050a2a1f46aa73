"""One-off diagnosis (session 4, one H100), kept as the record of the figures it gave (h100_probe_s4*.json).
It ran against commit 4966e88; its `attn` mode calls the decode-attention kernel with that commit's arguments
(session 5 moved the q/k normalisation into the kernel and added q_scale), so check that commit out to rerun it:
    python results/bench/probe_s4.py OUT.json attn gen sampler      # from the repo root
attn: one sampling step's attention (d16 at batch 256 with CFG: 512 rows, 16 heads, D 64, cache of 64):
      torch's SDPA (it picks cuDNN) after writing the new key/value, against generator.decode_attention's
      Triton kernel per chunk size (BLOCK_N) and warp count; each timed as 20 calls in a CUDA graph, as the
      sampler replays them. ('attn_one_tile' in the JSON: the kernel's first version, one 64-row tile
      with masked loads instead of the chunk loop, 1-8 warps.)
gen:  ms per train_gen d16 step (batch 256, bf16, compiled) for variants of SelfAttention's q/k
      l2-normalisation (whose backward was the largest non-matmul kernel) and of where the loss is computed.
      Caveat: the variants go in through functools.partialmethod, which dynamo does not trace through:
      graph breaks, and per-block recompiles (drop_path_rate) past the cache limit, so every variant runs
      slower than bench.py's step (84 vs 67.5 ms). Only the ranking was used; bench.py train_gen measured
      the chosen variant as the code now has it.
sampler: generate(fast=True, compile=True) at batch 256 with CFG, torch.compile's default mode against
      mode='max-autotune-no-cudagraphs' (Triton GEMM templates with fused epilogues) for the block math.
"""
import functools
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import common  # noqa: E402
from bench import cuda_graph  # noqa: E402
import generator  # noqa: E402
from generator import GPT, GPTConfig, MAX_LOG_ATTN_SCALE  # noqa: E402

out_path, what = sys.argv[1], sys.argv[2:]
results = json.loads(Path(out_path).read_text()) if Path(out_path).exists() else {}
dev = torch.device('cuda')


def graph_time_us(fn, calls=20, reps=10):
    for _ in range(10):
        fn()
    return event_time_ms(cuda_graph(fn, calls).replay, reps) * 1e3 / calls


def event_time_ms(fn, reps):
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


if 'attn' in what:
    R, H, N, D = 512, 16, 64, 64
    qkv = torch.randn(R, 3, H, D, device=dev, dtype=torch.bfloat16)
    q, k, v = qkv.unbind(1)
    cache = torch.randn(2, R, H, N, D, device=dev, dtype=torch.bfloat16)

    def sdpa(t):
        cache[0, :, :, t].copy_(k)
        cache[1, :, :, t].copy_(v)
        return F.scaled_dot_product_attention(q[:, :, None], cache[0, :, :, :t + 1], cache[1, :, :, :t + 1], scale=1.0)

    def kernel(t, block, warps):
        o = torch.empty(R, H, D, device=dev, dtype=torch.bfloat16)
        generator._decode_attention_kernel[(R, H)](q, k, v, cache[0], cache[1], o, t, q.stride(0), k.stride(0),
                                                  v.stride(0), cache[0].stride(0), cache[0].stride(1), H=H, D=D,
                                                  BLOCK_N=block, num_warps=warps)
        return o

    rows = []
    for t in (0, 8, 33, 63):
        row = {'t': t, 'floor_us': R * H * D * 2 * 2 * (t + 1) / 2.97e12 * 1e6, 'sdpa_us': graph_time_us(lambda: sdpa(t))}
        row.update({f'triton_b{b}_w{w}_us': graph_time_us(lambda: kernel(t, b, w)) for b in (8, 16, 32) for w in (1, 2, 4)})
        rows.append(row)
        print('attn', row, flush=True)
    results['attn'] = rows


def attention_forward(self, x, kv_cache=None, positions=None, visible=None, variant='permute_then_normalize'):
    """SelfAttention.forward for training (no cache) with the q/k normalisation done in different ways."""
    B, L, C = x.shape
    bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
    qkv = F.linear(x, self.qkv.weight, bias).view(B, L, 3, self.heads, -1)
    scale = self.log_scale.clamp(max=MAX_LOG_ATTN_SCALE).exp()
    if variant == 'normalize_then_permute':  # normalise in the (B, L, H, D) layout the matmul wrote
        q, k, v = qkv.unbind(2)
        q = F.normalize(q, dim=-1) * scale.view(1, 1, -1, 1).to(q.dtype)
        k = F.normalize(k, dim=-1)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    else:
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        if variant == 'rsqrt':
            q = q * (torch.rsqrt(q.float().square().sum(-1, keepdim=True).clamp_min(1e-24)) * scale).to(q.dtype)
            k = k * torch.rsqrt(k.float().square().sum(-1, keepdim=True).clamp_min(1e-24)).to(k.dtype)
        else:
            q = F.normalize(q, dim=-1) * scale.to(q.dtype)
            k = F.normalize(k, dim=-1)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0)
    return self.proj(out.transpose(1, 2).reshape(B, L, C))


if 'gen' in what:
    cfg, B = GPTConfig.preset('d16'), 256
    with torch.device('meta'):
        flops = GPT(cfg).train_flops_per_sample() * B
    rows = []
    original = generator.SelfAttention.forward
    for variant, loss_inside in (('permute_then_normalize', False), ('normalize_then_permute', False), ('rsqrt', False),
                                 ('normalize_then_permute', True)):
        generator.SelfAttention.forward = functools.partialmethod(attention_forward, variant=variant)
        torch._dynamo.reset()
        torch.manual_seed(0)
        model = GPT(cfg).to(dev)
        optimizer = common.adamw(model, 1e-4, (0.9, 0.95), 0.05, model.no_weight_decay())

        def loss_of(idx, labels):
            with torch.autocast('cuda', dtype=torch.bfloat16):
                logits = model(idx, labels)
            return F.cross_entropy(logits.transpose(1, 2), idx)
        compiled_model, compiled_loss = torch.compile(model), torch.compile(loss_of)
        idx = torch.randint(cfg.vocab_size, (B, cfg.n_tokens), device=dev)
        labels = torch.randint(cfg.num_classes, (B,), device=dev)

        def step():
            if loss_inside:
                loss = compiled_loss(idx, labels)
            else:
                with torch.autocast('cuda', dtype=torch.bfloat16):
                    logits = compiled_model(idx, labels)
                loss = F.cross_entropy(logits.transpose(1, 2), idx)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
            optimizer.step()
        for _ in range(3):
            step()
        ms = event_time_ms(step, 15)
        row = {'variant': variant, 'loss_inside_compile': loss_inside, 'ms_per_step': ms,
               'mfu_vs_776': flops / (ms / 1e3) / 776e12}
        rows.append(row)
        print('gen', row, flush=True)
        del model, optimizer
    generator.SelfAttention.forward = original
    results['gen'] = rows

if 'sampler' in what:
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset('d16')).to(dev).eval()
    labels = torch.randint(1000, (256,), device=dev)
    rows = []
    plain_compile = torch.compile
    for mode in ('default', 'max-autotune-no-cudagraphs'):
        torch._dynamo.reset()
        generator._FAST_SAMPLERS.clear()
        torch.compile = plain_compile if mode == 'default' else functools.partial(plain_compile, mode=mode)
        try:
            with torch.autocast('cuda', dtype=torch.bfloat16):
                first = event_time_ms(lambda: model.generate(labels, cfg_scale=1.5, fast=True, compile=True), 1)
                ms = event_time_ms(lambda: model.generate(labels, cfg_scale=1.5, fast=True, compile=True), 5)
            row = {'mode': mode, 'generate_ms': ms, 'first_call_s': first / 1e3}
        except Exception as e:
            row = {'mode': mode, 'error': repr(e)[:300]}
        torch.compile = plain_compile
        rows.append(row)
        print('sampler', row, flush=True)
    results['sampler'] = rows

Path(out_path).write_text(json.dumps(results, indent=1))
