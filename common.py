"""
Training plumbing shared by train_tok.py and train_gen.py: torchrun/DDP setup, AdamW parameter
groups, EMA, atomic checkpoints and the NaN guard.
"""
import hashlib
import json
import os
import random
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm


PEAK_FLOPS = 800e12  # bf16 matmul rate measured on an H100 (8192^3 product): the MFU denominator


def progress_bar(*args, **kwargs):
    """tqdm for every script: redrawn up to 10 times a second on a terminal, at most once a minute in a log
    file, where every redraw is another line."""
    terminal = kwargs.get('file', sys.stderr).isatty()
    return tqdm(*args, mininterval=0.1 if terminal else 60, dynamic_ncols=True, **kwargs)


@dataclass
class Dist:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def master(self):
        return self.rank == 0


def setup_distributed(device_arg='auto'):
    """Read torchrun's env vars (RANK, LOCAL_RANK, WORLD_SIZE); a plain `python script.py` is a world of one."""
    rank, world = int(os.environ.get('RANK', 0)), int(os.environ.get('WORLD_SIZE', 1))
    local_rank = int(os.environ.get('LOCAL_RANK', 0))
    if device_arg == 'auto':
        device_arg = 'cuda' if torch.cuda.is_available() else 'cpu'
    if device_arg.startswith('cuda'):
        device = torch.device('cuda', local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device(device_arg)
    if world > 1:
        dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo')
    return Dist(rank, local_rank, world, device)


def cleanup_distributed():
    if dist.is_initialized():
        # every rank arrives first: a rank that tore the group down while rank 0 still wrote its checkpoint
        # aborted once in CI (gloo: 'terminate called without an active exception', exit code -6)
        dist.barrier()
        dist.destroy_process_group()


def adamw(model, lr, betas, weight_decay, no_decay=()):
    """AdamW with weight decay only on matrices/conv kernels not named in no_decay (norms, biases, positions are excluded)."""
    decay, no_wd = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_wd if p.dim() < 2 or any(k in name for k in no_decay) else decay).append(p)
    groups = [{'params': decay, 'weight_decay': weight_decay}, {'params': no_wd, 'weight_decay': 0.0}]
    fused = all(p.is_cuda for p in decay + no_wd)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused or None)


def ema_decay(decay, step):
    """The EMA decay ramps up as (1 + step) / (10 + step), so early and short runs are not stuck at the init."""
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def ema_update(ema_model, model, decay):
    ema_params, params = list(ema_model.parameters()), list(model.parameters())
    torch._foreach_lerp_(ema_params, params, 1.0 - decay)
    for eb, b in zip(ema_model.buffers(), model.buffers()):
        eb.copy_(b)


def rng_state():
    return {'python': random.getstate(), 'numpy': np.random.get_state(), 'torch': torch.get_rng_state(),
            'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state):
    random.setstate(state['python'])
    np.random.set_state(state['numpy'])
    torch.set_rng_state(state['torch'])
    if state['cuda'] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def seed_model_randomness(seed, step, rank):
    """Seed torch's global generators (CPU and every GPU) for one training step of one process, so that
    dropout and drop-path masks differ between processes and steps, and a resumed run draws the masks the
    uninterrupted run would have drawn. Data order, label dropout and views come from step_generator-style
    streams shared by all processes instead: the global batch is the same on any number of processes."""
    torch.manual_seed(int(np.random.SeedSequence([seed, step, rank]).generate_state(1, np.uint64)[0]))


def step_generator(seed, step, device='cpu'):
    """The random stream of one step (or batch) from (seed, step): the same on any number of processes and after resume."""
    return torch.Generator(device).manual_seed(seed * 1_000_003 + step)


def atomic_write(path, write):
    """write(binary file) into a temp file, then rename: a crash mid-write never leaves a truncated file behind."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, 'wb') as f:
        write(f)
    os.replace(tmp, path)


def atomic_save(obj, path):
    atomic_write(path, lambda f: torch.save(obj, f))


def load_checkpoint(path, kind):
    """Load a checkpoint written by train_tok.py ('tokenizer') or train_gen.py ('generator') and check its kind."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    ckpt = torch.load(path, map_location='cpu', weights_only=False)
    found = ckpt.get('kind') if isinstance(ckpt, dict) else None
    if found != kind:
        trainer = {'tokenizer': 'train_tok.py', 'generator': 'train_gen.py'}[kind]
        raise ValueError(f"{path!r} is a {found or 'foreign'} checkpoint, expected a {kind} checkpoint written by {trainer}")
    return ckpt


def check_resume_args(args, saved_args, names):
    """Stop when a flag given now contradicts the run being resumed (flags left at None/False are fine)."""
    for name in names:
        given, saved = getattr(args, name), saved_args.get(name)
        if given not in (None, False) and name in saved_args and given != saved:
            raise SystemExit(f"--{name} {given} differs from the checkpoint's {saved}: "
                             f"pass --{name} {saved} (or leave it out) or start a new --out_dir")


def file_sha256(path):
    with open(path, 'rb') as f:
        return hashlib.file_digest(f, 'sha256').hexdigest()


def all_finite(flag):
    """flag: a device bool accumulated over steps without host syncs; one sync here, at log/checkpoint time."""
    flag = flag.clone().float()
    if dist.is_initialized():
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def stop_on_nonfinite(step, ckpt_path):
    raise SystemExit(f"non-finite loss at or before step {step}: stopped without saving; the last good checkpoint "
                     f"{ckpt_path!r} is intact. Resume from it with --resume, with a lower --lr or --grad_clip.")


def speed_record(n_steps, seconds, global_batch, flops_per_sample, d):
    """images/s, MFU per GPU against PEAK_FLOPS, and peak memory, for the log."""
    rate = n_steps * global_batch / seconds
    record = {'images_per_s': rate, 'mfu': rate * flops_per_sample / PEAK_FLOPS / d.world_size}
    if d.device.type == 'cuda':
        record['peak_mem_gb'] = torch.cuda.max_memory_allocated(d.device) / 2**30
    return record


def log_jsonl(path, record):
    with open(path, 'a') as f:
        f.write(json.dumps(record) + '\n')
