"""
Training plumbing shared by train_tok.py and train_gen.py: torchrun/DDP setup, gradient accumulation,
AdamW parameter groups, EMA, atomic checkpoints (by step, by wall time, the last K kept) and the NaN guard.
"""
import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
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


def micro_batch_size(batch_size, world_size, grad_accum):
    """Rows per forward pass: the global batch is split over the processes, and each share into grad_accum micro-batches."""
    if grad_accum < 1 or batch_size % (world_size * grad_accum):
        raise SystemExit(f"--batch_size {batch_size} must divide by {world_size} process(es) x --grad_accum {grad_accum}: "
                         f"change either so that it does")
    return batch_size // (world_size * grad_accum)


def gradient_sync(model, micro_step, grad_accum):
    """The context of one micro-step's forward and backward: DDP all-reduces the gradients in every backward,
    so all micro-steps but the last run under no_sync and add their gradients up locally."""
    if isinstance(model, DDP) and micro_step < grad_accum - 1:
        return model.no_sync()
    return contextlib.nullcontext()


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
    if torch.cuda.is_available():  # a run resumed on a host with fewer GPUs sets the ones it has
        for i, cuda_state in enumerate(state['cuda'][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, i)


def seed_model_randomness(seed, step, micro_batch):
    """Seed torch's global generators (CPU and every GPU) for one micro-batch of one training step, so that
    dropout and drop-path masks differ between processes, micro-steps and steps, and a resumed run draws the
    masks the uninterrupted run would have drawn. micro_batch is the place of this micro-batch in the global
    batch, rank x grad_accum + micro-step: the same rows draw the same masks whether a global batch is split
    over 8 processes or over 4 with --grad_accum 2. Data order, label dropout and views come from
    step_generator-style streams shared by all processes instead."""
    torch.manual_seed(int(np.random.SeedSequence([seed, step, micro_batch]).generate_state(1, np.uint64)[0]))


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


def tagged_checkpoints(path):
    """{step: path} of the step-tagged copies of checkpoint path (out/ckpt.pt -> out/ckpt_0001000.pt, ...)."""
    root, ext = os.path.splitext(path)
    folder, name = os.path.split(root)
    pattern = re.compile(re.escape(name) + r'_(\d{7,})' + re.escape(ext))
    found = (pattern.fullmatch(f) for f in os.listdir(folder or '.'))
    return {int(m[1]): os.path.join(folder, m[0]) for m in found if m}


def save_and_keep(obj, path, step, keep=0):
    """atomic_save(obj, path); with keep > 0 the same file also as path's step-tagged copy (ckpt_0001000.pt), of
    which the keep newest up to this step stay. Copies of later steps are left alone: they belong to the run
    that continued from an older checkpoint, not to this one, and are the user's to delete."""
    atomic_save(obj, path)
    if not keep:
        return
    root, ext = os.path.splitext(path)
    copy = f"{root}_{step:07d}{ext}"
    tmp = f"{copy}.tmp.{os.getpid()}"
    try:
        os.link(path, tmp)  # a second name for the same bytes: no second write of a multi-GB file
    except OSError:  # a filesystem without hard links
        shutil.copyfile(path, tmp)
    os.replace(tmp, copy)
    copies = tagged_checkpoints(path)
    for s in sorted(s for s in copies if s <= step)[:-keep]:
        os.remove(copies[s])


class CheckpointSchedule:
    """When to checkpoint: every `every` steps, at the last step, and with `minutes` also at the first log step
    that comes that many minutes of wall time after the last checkpoint (clusters preempt). Every process must
    agree, as a save holds collectives: rank 0's clock decides and its decision is broadcast; the clock is read
    only at log steps, where the processes synchronise anyway, never at every step."""

    def __init__(self, every, last_step, minutes, device):
        self.every, self.last_step, self.minutes, self.device = every, last_step, minutes, device
        self.last_save = time.time()

    def due(self, step, log_step):
        due = step % self.every == 0 or step == self.last_step
        if not due and self.minutes and log_step:
            late = torch.tensor(int(time.time() - self.last_save >= 60 * self.minutes), device=self.device)
            if dist.is_initialized():
                dist.broadcast(late, 0)
            due = bool(late.item())
        if due:
            self.last_save = time.time()
        return due


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
