"""
Training plumbing shared by train_tok.py and train_gen.py: torchrun/DDP setup, gradient accumulation,
AdamW parameter groups, EMA, atomic checkpoints (by step, by wall time, the last K kept; loaded without running
code), resume settings and the NaN guard.
"""
import argparse
import contextlib
import copy
import errno
import glob
import hashlib
import importlib
import json
import os
import pickle
import random
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm


PEAK_FLOPS = 800e12  # bf16 matmul rate measured on an H100 (8192^3 product): the MFU denominator


class UserError(Exception):
    """A mistake in the command line or in the files it names, or a fault of the machine the user can mend (a
    full disk): the message names the flag or file and the fix. Raised anywhere, library code included; a
    command-line entry point that called exit_on_user_error() prints it as one line and exits with status 2,
    argparse's status for a bad command line, without a traceback."""


def exit_on_user_error():
    """Called once by every command-line entry point: an uncaught UserError ends the program as argparse's errors
    do ('PROG: error: MESSAGE' on stderr, exit status 2); any other exception keeps its traceback. A hook rather
    than a try/except, so that the flat training scripts need no enclosing function; finally blocks and atexit
    handlers still run."""
    previous_hook = sys.excepthook

    def report(kind, error, traceback):
        if not issubclass(kind, UserError):
            return previous_hook(kind, error, traceback)
        sys.stdout.flush()
        print(f"{os.path.basename(sys.argv[0])}: error: {error}", file=sys.stderr)
        sys.exit(2)  # raised inside the hook, it still sets the exit status
    sys.excepthook = report


class ProgressBar(tqdm):
    """tqdm whose finished bar is drawn once: the last update, a closing set_postfix and close() would each draw
    the same 100% line again. A bar cleared to print a message above it (write) is drawn again after it."""

    finished_drawn = None

    def display(self, msg=None, pos=None):
        finished = (self.n, str(self.postfix))
        if self.total and self.n >= self.total and msg is None:
            if self.finished_drawn == finished:
                return True
            self.finished_drawn = finished
        return super().display(msg, pos)

    def clear(self, nolock=False):
        self.finished_drawn = None
        super().clear(nolock)


def progress_bar(*args, **kwargs):
    """tqdm for every script: redrawn up to 10 times a second on a terminal, at most once a minute in a log
    file, where every redraw is another line; the finished bar once."""
    terminal = kwargs.get('file', sys.stderr).isatty()
    interval = 0.1 if terminal else 60
    # maxinterval too: tqdm's monitor thread otherwise forces a redraw whenever the last one is 10 s old
    return ProgressBar(*args, mininterval=interval, maxinterval=max(interval, 10), dynamic_ncols=True, **kwargs)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help with the description as written and every flag's default; flags whose default is None (a rule their
    help states), False (off) or empty show none."""

    @staticmethod
    def shows_default(action):
        return not (action.default is None or action.default is False or action.default in ('', argparse.SUPPRESS))

    def _get_help_string(self, action):
        return super()._get_help_string(action) if self.shows_default(action) else action.help

    def _format_action(self, action):
        if not action.help and self.shows_default(action):
            action = copy.copy(action)
            action.help = 'default: %(default)s'  # argparse leaves out the default of a flag without help
        return super()._format_action(action)


@dataclass
class DistState:
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
    check_device(device_arg)
    if device_arg.startswith('cuda'):
        device = torch.device('cuda', local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device(device_arg)
    if world > 1:
        # torch._dynamo imported after the group exists (the first optimizer imports it) keeps references to the
        # group that destroy_process_group cannot drop (cleanup_distributed says why that matters)
        importlib.import_module('torch._dynamo')
        dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo')
    return DistState(rank, local_rank, world, device)


def check_device(device_arg):
    """Stop with the fix when --device names hardware this machine or this torch build lacks."""
    try:
        device = torch.device(device_arg)
    except RuntimeError as e:
        raise UserError(f"--device {device_arg}: {e}; use auto, cpu or cuda")
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise UserError(f"--device {device_arg}: CUDA is not available (torch {torch.__version__}); "
                        f"use --device cpu, or leave --device auto")


def bf16_autocast_on(bf16_flag, device):
    """Whether to run under bf16 autocast: --bf16 / --no-bf16 as given; left out (None), on with CUDA and off on
    a CPU. Every script that takes --bf16 resolves it here, so they all default alike."""
    return device.type == 'cuda' if bf16_flag is None else bf16_flag


def check_flags(args, positive=(), non_negative=()):
    """Stop with a message for counts a run cannot use: flags in positive must be >= 1, in non_negative >= 0
    (0 = never); a None (flag left to its default rule) passes."""
    for names, low, rule in ((positive, 1, 'at least 1'), (non_negative, 0, '0 (never) or more')):
        for name in names:
            value = getattr(args, name)
            if value is not None and value < low:
                raise UserError(f"--{name} {value}: must be {rule}")


def cleanup_distributed():
    """Tear the process group down: every rank arrives, then destroy_process_group. The group must die here, not
    at interpreter exit, where gloo's threads race the static destructors and about one two-process run in 60
    aborts after finishing ('terminate called without an active exception', exit code -6). So nothing may still
    hold it: the trainers delete their DDP wrappers first, and setup_distributed imports torch._dynamo before
    creating it."""
    if dist.is_initialized():
        # every rank arrives first: a rank that tears the group down while rank 0 still writes its checkpoint
        # makes gloo abort the run ('terminate called without an active exception', exit code -6)
        dist.barrier()
        dist.destroy_process_group()


def micro_batch_size(batch_size, world_size, grad_accum):
    """Rows per forward pass: the global batch is split over the processes, and each share into grad_accum micro-batches."""
    if grad_accum < 1 or batch_size % (world_size * grad_accum):
        raise UserError(f"--batch_size {batch_size} must divide by {world_size} process(es) x --grad_accum {grad_accum}: "
                        f"change either so that it does")
    return batch_size // (world_size * grad_accum)


def gradient_sync(model, micro_step, grad_accum):
    """The context of one micro-step's forward and backward: DDP all-reduces the gradients in every backward,
    so all micro-steps but the last run under no_sync and add their gradients up locally."""
    if isinstance(model, DDP) and micro_step < grad_accum - 1:
        return model.no_sync()
    return contextlib.nullcontext()


def cpu_cores():
    """The CPU cores this process may use: those it may run on (its affinity: a container's or taskset's share),
    shared among the processes torchrun starts on this host."""
    return max(1, len(os.sched_getaffinity(0)) // int(os.environ.get('LOCAL_WORLD_SIZE', 1)))


def use_cpu_cores(device, workers=0):
    """Fit a run to its cores: -> (--workers, a line saying what was chosen). workers None: image loading processes
    from the cores (on a GPU up to 8, one core left to the training process; on a CPU none up to 3 cores, where the
    model needs every core and small images decode in the training process at no cost worth a core). On a CPU
    also torch's threads: the cores not taken by the loader processes nor, over the last minute (the load
    average), by other processes. Threads beyond the idle cores wait on each other: with another process busy
    on one of 2 cores, a tiny tokenizer's step took 3-6 s on 2 threads, 1.3-1.8 s on 1. OMP_NUM_THREADS, when
    set, decides the threads."""
    cores = cpu_cores()
    if workers is None:
        workers = min(8, cores - 1) if device.type == 'cuda' else min(8, cores // 4)
    if device.type != 'cpu':
        return workers, f"{workers} image loading process(es) ({cores} CPU cores)"
    if 'OMP_NUM_THREADS' not in os.environ:
        others = os.getloadavg()[0] / int(os.environ.get('LOCAL_WORLD_SIZE', 1))
        torch.set_num_threads(max(1, cores - workers - round(others)))
        source = f"{cores} cores, load {others:.1f}"
    else:
        source = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"
    return workers, f"{torch.get_num_threads()} thread(s) and {workers} image loading process(es) ({source})"


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


def check_warmup(warmup, max_steps):
    """Stop when --warmup exceeds --max_steps: the lr would never reach its peak."""
    if warmup > max_steps:
        raise UserError(f"--warmup {warmup} is longer than --max_steps {max_steps}: the lr would never reach its peak; "
                         f"pass --warmup {max(1, max_steps // 10)} (a tenth of the run) or raise --max_steps")


def rng_state():
    """Every random stream, as tensors, ints and lists only (so a checkpoint loads with weights_only=True)."""
    _, key, pos, has_gauss, gauss = np.random.get_state()
    return {'python': random.getstate(), 'numpy': {'key': torch.from_numpy(key.astype(np.int64)), 'pos': pos,
                                                   'has_gauss': has_gauss, 'gauss': gauss},
            'torch': torch.get_rng_state(), 'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state):
    random.setstate(state['python'])
    numpy = state['numpy']
    if isinstance(numpy, dict):
        numpy = ('MT19937', numpy['key'].numpy().astype(np.uint32), numpy['pos'], numpy['has_gauss'], numpy['gauss'])
    np.random.set_state(numpy)  # a tuple holding an ndarray in checkpoints written before rng_state() held tensors
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


def remove_stale_temp_files(path):
    """Delete the temp files of atomic writes to path whose process is gone (killed mid-save, disk full)."""
    for tmp in glob.glob(glob.escape(path) + '.tmp.*'):
        pid = tmp.rsplit('.', 1)[1]
        if pid.isdigit() and not process_alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)


def process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


def atomic_write(path, write):
    """write(binary file) into a temp file, then rename: a crash mid-write never leaves a truncated file behind,
    and a failed write (disk full) leaves no temp file either, and the file as it was before."""
    with disk_full_reported(path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        remove_stale_temp_files(path)
        tmp = f"{path}.tmp.{os.getpid()}"
        try:
            with open(tmp, 'wb') as f:
                write(f)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
            raise


@contextlib.contextmanager
def disk_full_reported(path):
    """A full disk while writing path ends the command with a UserError naming path, not a raw OSError or
    torch's '[enforce fail at inline_container.cc]'."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        if disk_full(e):
            raise UserError(f"no space left on the device while writing {path!r}: free space and run again "
                            f"(files written before it are whole)") from None
        raise


def disk_full(error):
    """Whether error, or an error it was raised from or while handling, is a full disk (or quota): an OSError
    ENOSPC / EDQUOT, or torch.save's RuntimeError from its zip writer ('[enforce fail at inline_container.cc]'),
    which carries the OSError of the file object it wrote to as its context, or names errno 28 only in its text."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if re.search(r'No space left on device|errno:? ?28\b|error code:? ?28\b', str(error), re.IGNORECASE):
            return True
        error = error.__cause__ or error.__context__
    return False


def check_writable(folder, flag):
    """Stop before any work when folder (created if missing) cannot take files: a read-only or misspelt output
    location would otherwise fail only at the first write, after the work. Every command that writes calls it,
    or check_writable_file, first."""
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise UserError(f"{flag}: {folder!r} is not a writable folder ({e.strerror}): pass another {flag}")


def check_writable_file(path, flag):
    """check_writable for an output file: its folder must take files, and path must not be a folder."""
    if os.path.isdir(path):
        raise UserError(f"{flag}: {path!r} is a folder: pass a file path")
    check_writable(os.path.dirname(os.path.abspath(path)), flag)


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
    tagged = f"{root}_{step:07d}{ext}"
    tmp = f"{tagged}.tmp.{os.getpid()}"
    with disk_full_reported(tagged):
        try:
            os.link(path, tmp)  # a second name for the same bytes: no second write of a multi-GB file
        except OSError:  # a filesystem without hard links
            shutil.copyfile(path, tmp)
        os.replace(tmp, tagged)
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


# numpy arrays in the RNG state of checkpoints written before rng_state() stored tensors
LEGACY_CHECKPOINT_GLOBALS = [np.ndarray, np.dtype, np.dtypes.UInt32DType, np._core.multiarray._reconstruct]
CHECKPOINT_KEYS = {'tokenizer': ('config', 'model', 'step'), 'generator': ('config', 'model', 'step', 'tokenizer')}


def load_checkpoint(path, kind):
    """Load a checkpoint written by train_tok.py ('tokenizer') or train_gen.py ('generator') and check its kind
    (kind None: either).
    weights_only: a checkpoint is data (tensors, numbers, strings, lists, dicts); one whose pickle would import
    or call anything else is refused without running it. Raises ValueError with the reason for any other file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    trainer = {'tokenizer': 'train_tok.py', 'generator': 'train_gen.py', None: 'train_tok.py or train_gen.py'}[kind]
    try:
        with torch.serialization.safe_globals(LEGACY_CHECKPOINT_GLOBALS):
            ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        if 'GLOBAL' in str(e):  # a pickle that names a class or function; random bytes fail on an opcode instead
            raise ValueError(f"{path!r} holds objects other than tensors, numbers, strings, lists and dicts: refused "
                             f"unread, since loading it could run code. A {kind} checkpoint comes from {trainer}") from None
        reason = re.search(r'WeightsUnpickler error:\s*(.+)', str(e))  # torch's message runs over several lines
        raise ValueError(f"{path!r} is not a checkpoint (a damaged or foreign file: "
                         f"{reason[1].strip() if reason else str(e).splitlines()[0]}); "
                         f"use a checkpoint written by {trainer}") from None
    except Exception as e:  # random bytes raise almost anything (EOFError, UnicodeDecodeError, RuntimeError...)
        reason = f"{type(e).__name__}: {e}".partition('\n')[0]
        raise ValueError(f"{path!r} cannot be read as a checkpoint ({reason}): it is truncated or not a checkpoint; "
                         f"use an intact checkpoint written by {trainer}") from None
    found = ckpt.get('kind') if isinstance(ckpt, dict) else None
    if found not in ((kind,) if kind else tuple(CHECKPOINT_KEYS)):
        raise ValueError(f"{path!r} is a {found or 'foreign'} checkpoint, expected a {kind or 'tokenizer or generator'} "
                         f"checkpoint written by {trainer}")
    missing = [key for key in CHECKPOINT_KEYS[found] if key not in ckpt]
    if missing:
        raise ValueError(f"{path!r} is a {found} checkpoint without {', '.join(missing)}: it was not written by "
                         f"{trainer}; use one that was")
    weights = {name: ckpt[name] for name in ('model', 'ema') if ckpt.get(name) is not None}
    if not states_finite(weights):  # the trainers never write these; a model of NaNs would sample without a word
        raise ValueError(f"{path!r} holds non-finite (NaN or inf) weights: a model of them computes nothing; "
                         f"use an earlier checkpoint of the run")
    return ckpt


def ema_or_model(ckpt):
    """The weights a checkpoint is used with: its EMA weights, or its model's where it has none (a run without EMA,
    or a weights-only export, whose model holds the EMA weights)."""
    return ckpt['ema'] if ckpt.get('ema') is not None else ckpt['model']


def load_resume_checkpoint(args, ckpt_path, kind, weights_only_ok=False):
    """The checkpoint --resume names (its bare form: ckpt_path), or a stop with the reason and the fix. A weights-only
    export (scripts/export_weights.py) is refused unless weights_only_ok (a run that only evaluates)."""
    path = ckpt_path if args.resume == 'auto' else args.resume
    try:
        ckpt = load_checkpoint(path, kind)
    except FileNotFoundError as e:
        raise UserError(f"--resume: {e}: drop --resume to start a new run, or pass --resume PATH_TO_CKPT")
    except ValueError as e:
        raise UserError(f"--resume: {e}")
    if ckpt.get('weights_only') and not weights_only_ok:
        raise UserError(f"--resume: {path!r} holds weights only (scripts/export_weights.py), without the optimizer and "
                        f"training state a run continues from: resume from {ckpt['exported_from']['path']!r}, the "
                        f"checkpoint it was exported from")
    return ckpt


def flags_given(parser, argv=None):
    """The dests of the flags given on the command line (not left at their defaults)."""
    probe = copy.deepcopy(parser)
    for action in probe._actions:
        action.default = argparse.SUPPRESS  # flags left out then leave no attribute at all
    return set(vars(probe.parse_args(argv)))


def resume_message(step, changed, max_steps, training=True):
    """The line a trainer prints on --resume: the step, the flags given anew, and a note when the run is already at
    --max_steps (training=False: an evaluation-only resume, for which that does not matter)."""
    return (f"resuming at step {step} with the checkpoint's settings"
            + (f", changed: {', '.join('--' + name for name in changed)}" if changed else "")
            + (f"; it has reached --max_steps {max_steps}: raise --max_steps to train further"
               if training and step >= max_steps else ""))


def apply_resume_args(parser, args, saved_args, fixed, keep=()):
    """Resume reads its settings from the checkpoint: every flag not given on the command line takes the value
    the run was started with (saved_args), except those in keep (where and how to run: device, workers...).
    A flag in fixed (it shapes the model or the data stream) given with another value than the run's stops.
    Returns the names given anew that change the run (e.g. --lr, --max_steps)."""
    given = flags_given(parser)
    for name in fixed:
        value, saved = getattr(args, name), saved_args.get(name)
        if name in given and name in saved_args and value != saved:
            shown = (lambda v: f"with --{name}" if v is True else f"without --{name}" if v is False or v is None
                     else f"with --{name} {v}")
            raise UserError(f"--{name}{'' if value is True else f' {value}'} contradicts the checkpoint, which was trained "
                            f"{shown(saved)}: "
                            f"leave --{name} out when resuming (resume reads it from the checkpoint), "
                            f"or start a new run in another --out_dir")
    changed = []
    for name, saved in saved_args.items():
        if not hasattr(args, name) or name in keep or name == 'resume':
            continue
        if name not in given:
            setattr(args, name, saved)
        elif getattr(args, name) != saved:
            changed.append(name)
    return changed


def file_sha256(path):
    with open(path, 'rb') as f:
        return hashlib.file_digest(f, 'sha256').hexdigest()


def all_finite(flag):
    """flag: a device bool accumulated over steps without host syncs; one sync here, at log/checkpoint time."""
    flag = flag.clone().float()
    if dist.is_initialized():
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def states_finite(*states):
    """Device bool: every floating tensor in these state dicts / optimizer states (nested dicts and lists) is
    finite. A loss can be finite while the update it drove was not, so a checkpoint checks the weights too."""
    tensors = []

    def collect(x):
        if torch.is_tensor(x):
            if x.is_floating_point():
                tensors.append(x)
        elif isinstance(x, dict):
            for v in x.values():
                collect(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                collect(v)
    for state in states:
        collect(state)
    return torch.stack([torch.isfinite(t).all() for t in tensors]).all() if tensors else torch.ones((), dtype=torch.bool)


def check_checkpoint_finite(step, ckpt_path, finite, loss_of_weights, *states):
    """Before a checkpoint is written (call on every rank): stop unless the losses since the last check (finite, a
    device bool), the loss of the weights about to be saved (loss_of_weights) and every floating tensor of states
    (model, optimizer) are finite, so the last good checkpoint is never overwritten. The training losses were
    computed before each update: an lr of 1e9 leaves weights after step 1 that are finite but that no step survives."""
    if not all_finite(finite & states_finite(*states) & torch.isfinite(loss_of_weights)):
        stop_on_nonfinite(step, ckpt_path, 'loss or weights')


def stop_on_nonfinite(step, ckpt_path, what='loss'):
    """Stop without saving; name the checkpoint to resume from only if one was written."""
    if os.path.isfile(ckpt_path):
        advice = (f"the last checkpoint written, {ckpt_path!r}, held finite weights and is intact: resume from it with "
                  f"--resume and a lower --lr or --grad_clip")
    else:
        advice = f"no checkpoint was written yet ({ckpt_path!r} does not exist): start again with a lower --lr or --grad_clip"
    raise SystemExit(f"non-finite {what} at or before step {step}: stopped without saving; {advice}.")


def format_duration(seconds):
    """'42 s', '3 min 05 s' or '2 h 07 min', for closing summary lines."""
    minutes, seconds = divmod(round(seconds), 60)
    if not minutes:
        return f"{seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {seconds:02d} s"


def speed_record(n_steps, seconds, global_batch, flops_per_sample, dist_state):
    """images/s, MFU per GPU against PEAK_FLOPS, and peak memory, for the log."""
    rate = n_steps * global_batch / seconds
    record = {'images_per_s': rate, 'mfu': rate * flops_per_sample / PEAK_FLOPS / dist_state.world_size}
    if dist_state.device.type == 'cuda':
        record['peak_mem_gb'] = torch.cuda.max_memory_allocated(dist_state.device) / 2**30
    return record


def log_jsonl(path, record):
    with disk_full_reported(path), open(path, 'a') as f:
        f.write(json.dumps(record) + '\n')
