"""
Train the SpectralAR generator (sec. 3.3) on the tokens of a trained Nested Spectral Tokenizer, with VAR's recipe.

    python train_gen.py --preset tiny --tok_ckpt out/tok/ckpt.pt --data DIR --max_steps 200   # CPU smoke run
    torchrun --nproc_per_node=8 train_gen.py --preset d16 --tok_ckpt out/tok/ckpt.pt --data /imagenet/train \
        --val_data /imagenet/val --batch_size 768
    torchrun --nproc_per_node=4 train_gen.py ... --batch_size 768 --grad_accum 2   # the same run on 4 GPUs (docs/scaling.md)

First pass: --data is encoded once into a token file (--tokens, default OUT_DIR/tokens.npz; see tokens.py),
--augment K views per image (default 2: the image and its flip), and --val_data into OUT_DIR/val_tokens.npz
(the images alone). Training reads tokens only: one view per image per epoch, teacher-forced
cross-entropy, label dropout for CFG, dropout and drop path, AdamW (0.9, 0.95) with wd 0.05 off
biases/positions/scales, lr = --lr x global_batch / 256 with linear warmup and linear decay to --lr_end of
it, grad clip 2.0. The log holds loss and top-1 accuracy per token position.

Every --eval_every steps, in eval mode and with true labels, the model that is sampled (EMA when --ema)
scores a fixed set of validation rows and, with the same estimator, a fixed subset of the training images
(view 0): the negative log-likelihood in nats per sequence and per position (log.jsonl, nll.png).
A generator that memorises shows a validation NLL far above the training rows' NLL.
Checkpoints: ckpt.pt (latest, for --resume; also every --ckpt_minutes, and the last --keep as ckpt_XXXXXXX.pt)
and best.pt (lowest validation NLL), all written atomically.
"""
import argparse
import copy
import dataclasses
import functools
import itertools
import os
import time

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import common
import plot
import tokens
from data import ResumableSampler, class_names, save_grid
from generator import GPT, PRESETS, GPTConfig, drop_labels
from tokenizer import Tokenizer

common.exit_on_user_error()
parser = argparse.ArgumentParser(description=__doc__, formatter_class=common.HelpFormatter)
parser.add_argument('--tok_ckpt', required=True, help='tokenizer checkpoint written by train_tok.py')
parser.add_argument('--data', help='ImageFolder root (<class>/<image> files); needed only to encode the token file')
parser.add_argument('--tokens', help='token file (default: OUT_DIR/tokens.npz); encoded first when missing')
parser.add_argument('--augment', type=int, default=2, metavar='K',
                    help='views per image in the token file: 1 the image, 2 also its flip, more add random zoom crops')
parser.add_argument('--augment_scale', type=float, default=0.8, help="zoom crops' smallest side, as a fraction of the image")
parser.add_argument('--val_data', help='ImageFolder of held-out images (e.g. CIFAR-10 test/): the validation NLL and best.pt')
parser.add_argument('--val_tokens', help='validation token file (default: OUT_DIR/val_tokens.npz); encoded first when missing')
parser.add_argument('--eval_every', type=int, default=1000, help='steps between NLL evaluations (0: only at the end)')
parser.add_argument('--eval_rows', type=int, default=10_000, help='validation rows, and training images, scored per evaluation')
parser.add_argument('--eval_batch', type=int, default=1000, help='rows per forward pass in evaluations, per process')
parser.add_argument('--out_dir', default='out/gen')
parser.add_argument('--preset', choices=PRESETS, help="default: from the tokenizer's image size, cifar_d8 for 32 px, d16 for "
                    "256 px; tiny is the CPU smoke test")
parser.add_argument('--dropout', type=float, help="dropout on attention and residual branches (default: the preset's, 0)")
parser.add_argument('--drop_path', type=float, help="drop-path rate of the last block (default: the preset's)")
parser.add_argument('--tokens_per_step', type=int, help='P tokens predicted together per sampling step, a divisor of N '
                    "(default 1, next-token; the paper's d16-p4 uses 4)")
parser.add_argument('--batch_size', type=int, default=256, help='global batch over all processes and micro-steps')
parser.add_argument('--grad_accum', type=int, default=1,
                    help='micro-steps per optimizer step: each process runs batch_size / (processes x grad_accum) rows at a time')
parser.add_argument('--max_steps', type=int, default=200_000)
parser.add_argument('--lr', type=float, default=1e-4, help='base lr per 256 samples: the peak lr is lr x batch_size / 256')
parser.add_argument('--lr_end', type=float, default=0.01, help='final lr as a fraction of the peak (VAR: 0.01)')
parser.add_argument('--warmup', type=int, help='warmup steps (default: max_steps / 50, as VAR)')
parser.add_argument('--weight_decay', type=float, default=0.05)
parser.add_argument('--grad_clip', type=float, default=2.0)
parser.add_argument('--label_drop', type=float, default=0.1, help='probability of the null class (CFG training)')
parser.add_argument('--ema', type=float, default=0.0, help='EMA decay of the weights (0: no EMA)')
parser.add_argument('--bf16', action=argparse.BooleanOptionalAction, default=None, help='bf16 autocast (default: on with CUDA)')
parser.add_argument('--compile', action='store_true')
parser.add_argument('--seed', type=int, default=0)
parser.add_argument('--device', default='auto')
parser.add_argument('--log_every', type=int, default=100)
parser.add_argument('--ckpt_every', type=int, default=5000)
parser.add_argument('--ckpt_minutes', type=float, help='also checkpoint at the first log step this many minutes after the last checkpoint')
parser.add_argument('--keep', type=int, default=0, help='also keep the last K checkpoints as ckpt_XXXXXXX.pt (0: only ckpt.pt)')
parser.add_argument('--sample_every', type=int, default=5000, help='steps between sample grid PNGs (0: never)')
parser.add_argument('--sample_cfg', type=float, default=1.5, help='CFG scale of the sample grids')
parser.add_argument('--resume', nargs='?', const='auto', help='checkpoint to resume (no value: out_dir/ckpt.pt); '
                    'flags left out take the checkpoint\'s values')
parser.add_argument('--encode_only', action='store_true', help='write the token file and exit')
parser.add_argument('--encode_batch', type=int, default=256, help='images per encoding batch and process (x2 with flips)')
parser.add_argument('--encode_chunk', type=int, default=10_000, help='images per chunk (an interrupted encoding resumes by chunk)')
parser.add_argument('--encode_bf16', action='store_true',
                    help='encode under bf16 autocast: faster, but it changed 23%% of the codes of a small CIFAR tokenizer (default: fp32)')
parser.add_argument('--workers', type=int, help='image loading processes for encoding (default: from the CPU cores, see '
                    'common.use_cpu_cores)')
args = parser.parse_args()
common.check_flags(args, positive=('batch_size', 'grad_accum', 'max_steps', 'log_every', 'ckpt_every', 'eval_rows',
                             'eval_batch', 'encode_batch', 'encode_chunk'),
                   non_negative=('warmup', 'eval_every', 'ckpt_minutes', 'keep', 'sample_every', 'workers'))
# where and how to run, and what the token files hold: never taken from a resumed checkpoint
MACHINE_FLAGS = ('tok_ckpt', 'data', 'tokens', 'val_data', 'val_tokens', 'out_dir', 'device', 'workers', 'compile', 'bf16',
                 'encode_only', 'encode_batch', 'encode_chunk', 'encode_bf16')
# what shapes the model or the data stream: a resumed run must not contradict the checkpoint. Not --grad_accum:
# a run may continue on another number of processes with the same global --batch_size.
RUN_FLAGS = ('preset', 'dropout', 'drop_path', 'tokens_per_step', 'batch_size', 'seed', 'augment', 'augment_scale')
PRESET_FOR_IMAGE_SIZE = {32: 'cifar_d8', 256: 'd16'}  # --preset left out: the generator made for the tokenizer's size


def check_val_classes(val_classes, train_classes, val_root):
    """Stop unless the validation images' class folders are the training data's. ImageNet's validation set ships
    as one flat folder: checked before encoding, it fails before hours of it."""
    if val_classes == train_classes:
        return
    if not val_classes:
        raise common.UserError(f"--val_data {val_root!r} has no class folders, the training data has {len(train_classes)}: sort "
                         f"its images into the training data's class folders first. ImageNet's validation set ships as one "
                         f"flat folder; imagenet/extract_ILSVRC.sh of github.com/pytorch/examples moves each image into its "
                         f"synset folder")
    raise common.UserError(f"--val_data {val_root!r} has the classes {val_classes[:5]}..., the training data "
                     f"{train_classes[:5]}...: --val_data needs the same class folders as --data")


# ----------------------------------------------------------------------------- setup
run_start = time.time()
dist_state = common.setup_distributed(args.device)
device = dist_state.device
ckpt_path = os.path.join(args.out_dir, 'ckpt.pt')
resume = None
if args.resume:  # first: the run's settings decide the batch split, the token files and the model
    resume = common.load_resume_checkpoint(args, ckpt_path, 'generator')
    run_settings = {**resume['args'], **{name: resume['config'][name] for name in ('dropout', 'drop_path', 'tokens_per_step')
                                         if name in resume['config']}}
    changed = common.apply_resume_args(parser, args, run_settings, fixed=RUN_FLAGS, keep=MACHINE_FLAGS)
    if dist_state.master:
        print(common.resume_message(resume['step'], changed, args.max_steps))
if not 0 <= args.label_drop < 1:
    raise common.UserError(f"--label_drop {args.label_drop}: a probability of the null class, use 0 (no guidance "
                           f"training) .. below 1 (at 1 no label is ever seen)")
if dist_state.master:
    common.check_writable(args.out_dir, '--out_dir')  # before hours of encoding into it
micro_batch = common.micro_batch_size(args.batch_size, dist_state.world_size, args.grad_accum)
args.workers, cores_used = common.use_cpu_cores(device, args.workers)
use_bf16 = common.bf16_autocast_on(args.bf16, device)
autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)
best_path = os.path.join(args.out_dir, 'best.pt')
log_path = os.path.join(args.out_dir, 'log.jsonl')
tokens_path = args.tokens or os.path.join(args.out_dir, 'tokens.npz')
val_tokens_path = args.val_tokens or os.path.join(args.out_dir, 'val_tokens.npz')
if args.augment < 1 or not 0 < args.augment_scale <= 1:
    raise common.UserError(f"--augment {args.augment} --augment_scale {args.augment_scale}: use at least 1 view and a scale in (0, 1]")

try:
    tok = Tokenizer.from_checkpoint(args.tok_ckpt, device)
except (FileNotFoundError, ValueError) as e:
    raise common.UserError(f"--tok_ckpt: {e}")
tokenizer_record = tokens.tokenizer_record(tok, args.tok_ckpt)
N, K = tok.config.n_tokens, tok.config.codebook_size
encoding = dict(dist_state=dist_state, seed=args.seed, chunk_size=args.encode_chunk, batch_size=args.encode_batch,
                workers=args.workers, bf16=args.encode_bf16)

if args.val_data and not os.path.exists(val_tokens_path) and os.path.isdir(args.val_data):  # before any encoding
    train_classes = (tokens.read_meta(tokens_path)['classes'] if os.path.exists(tokens_path) else
                     class_names(args.data) if args.data and os.path.isdir(args.data) else None)
    if train_classes is not None:
        check_val_classes(class_names(args.val_data), train_classes, args.val_data)
if not os.path.exists(tokens_path):
    if args.data is None:
        raise common.UserError(f"token file {tokens_path!r} does not exist: pass --data IMAGE_FOLDER to encode it")
    tokens.encode_folder(tok, args.tok_ckpt, args.data, tokens_path, views=args.augment,
                         augment_scale=args.augment_scale, **encoding)
token_meta = tokens.check_token_file(tokens_path, tokenizer_record, args.data, args.augment)
has_val = bool(args.val_data) or os.path.exists(val_tokens_path)
if args.val_data and not os.path.exists(val_tokens_path):
    tokens.encode_folder(tok, args.tok_ckpt, args.val_data, val_tokens_path, views=1, **encoding)
val_meta = tokens.check_token_file(val_tokens_path, tokenizer_record, args.val_data, flag='--val_data') if has_val else None
if val_meta:
    check_val_classes(val_meta['classes'], token_meta['classes'], args.val_data or val_tokens_path)
if args.encode_only:
    common.cleanup_distributed()
    raise SystemExit(0)
token_codes, token_labels, _ = tokens.load(tokens_path)
views = token_meta['views']
n_images = len(token_codes) // views


def evaluation_rows(codes, labels, n_views, n, seed):
    """(codes, labels) of n images' view 0: the first n images, or with a seed n images drawn once from it."""
    images = np.arange(len(codes) // n_views)
    if seed is not None and n < len(images):
        images = np.sort(np.random.default_rng(seed).choice(images, n, replace=False))
    rows = images[:n] * n_views
    return codes[rows], labels[rows]


eval_sets = {'train': evaluation_rows(token_codes, token_labels, views, args.eval_rows, seed=args.seed)}
if has_val:
    val_codes, val_labels, _ = tokens.load(val_tokens_path)
    eval_sets['val'] = evaluation_rows(val_codes, val_labels, val_meta['views'], args.eval_rows, seed=None)

# ----------------------------------------------------------------------------- model
num_classes = max(1, len(token_meta['classes']))  # a folder without class subfolders is one class
token_files = {tokens_path: (token_codes, token_labels), **({val_tokens_path: (val_codes, val_labels)} if has_val else {})}
for path, (codes, labels) in token_files.items():
    if len(codes) and (codes.max() >= K or labels.min() < 0 or labels.max() >= num_classes):
        raise common.UserError(f"{path!r} holds codes outside 0..{K - 1} or labels outside 0..{num_classes - 1}, so it was not "
                               f"encoded by --tok_ckpt from its {num_classes} classes: delete it to encode again")
torch.manual_seed(args.seed)  # here, not earlier: the encoding's DataLoader draws from the global RNG
if resume:
    if resume['tokenizer']['sha256'] != tokenizer_record['sha256']:
        raise common.UserError(f"the checkpoint was trained on the tokens of {resume['tokenizer']['path']!r}, not of "
                               f"--tok_ckpt {args.tok_ckpt!r}: pass that tokenizer or start a new --out_dir")
    config = GPTConfig(**resume['config'])
else:
    if args.preset is None:
        args.preset = PRESET_FOR_IMAGE_SIZE.get(tok.config.image_size)
        if args.preset is None:
            raise common.UserError(f"--preset: no generator preset is made for the tokenizer's {tok.config.image_size} px images: "
                             f"pass --preset with one of {', '.join(PRESETS)}")
        if dist_state.master:
            print(f"no --preset given: {args.preset}, the preset for {tok.config.image_size} px tokenizers")
    overrides = {name: getattr(args, name) for name in ('dropout', 'drop_path', 'tokens_per_step')
                 if getattr(args, name) is not None}
    config = GPTConfig.preset(args.preset, n_tokens=N, vocab_size=K, num_classes=num_classes, **overrides)
if config.num_classes != num_classes:
    raise common.UserError(f"the generator has {config.num_classes} classes but the token file {num_classes}")
try:
    model = GPT(config).to(device)
except ValueError as e:  # a --tokens_per_step that does not divide N
    raise common.UserError(f"--tokens_per_step: {e}")
ema_model = copy.deepcopy(model).eval().requires_grad_(False) if args.ema > 0 else None
optimizer = common.adamw(model, args.lr, (0.9, 0.95), args.weight_decay, model.no_weight_decay())

step, best_val_nll = 0, float('inf')
if resume:
    model.load_state_dict(resume['model'])
    if ema_model is not None:
        ema_model.load_state_dict(common.ema_or_model(resume))
    optimizer.load_state_dict(resume['optimizer'])
    common.set_rng_state(resume['rng'])
    step = resume['step']
    best_val_nll = resume.get('best_val_nll', float('inf'))
    del resume

peak_lr = args.lr * args.batch_size / 256
warmup = max(1, args.max_steps // 50 if args.warmup is None else args.warmup)
common.check_warmup(warmup, args.max_steps)
if dist_state.master:
    print(f"generator {config}\n{model.num_params() / 1e6:.1f}M params, {n_images} images x {views} view(s) of "
          f"{num_classes} classes, {dist_state.world_size} process(es) on {device}, bf16 {use_bf16}, "
          f"global batch {args.batch_size} = {dist_state.world_size} x {args.grad_accum} x {micro_batch} (processes x --grad_accum x micro-batch); "
          f"{cores_used}\npeak lr {peak_lr:.3g} = --lr {args.lr:g} x --batch_size {args.batch_size} / 256, reached after "
          f"{warmup} warmup steps" + ("" if args.batch_size == 256 else " (--lr is the lr of a batch of 256)")
          + ("" if has_val else "\nno --val_data: the NLL of training rows alone is logged, and no best.pt is kept"))
# compile first, then DDP (as nanoGPT): compiling the DDP wrapper splits the graph at every gradient bucket
train_model = torch.compile(model) if args.compile else model
if dist_state.world_size > 1:
    train_model = DDP(train_model, device_ids=[dist_state.local_rank] if device.type == 'cuda' else None)


def lr_at(step):
    """VAR's schedule: linear warmup, then linear decay to lr_end x peak at max_steps."""
    if step < warmup:
        return peak_lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, args.max_steps - warmup))
    return peak_lr * (1 - (1 - args.lr_end) * progress)


@functools.lru_cache(maxsize=1)
def epoch_views(epoch):
    """The view each image shows in an epoch (n_images,), drawn from (seed, epoch), as the image order is."""
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence([args.seed, epoch, 1]).generate_state(1)[0]))
    return torch.randint(views, (n_images,), generator=generator).numpy()


def next_batch(images_stream, step):
    """This process's slice of the global batch: token rows (one view of each image) and labels, label dropout
    drawn from (seed, step) over the whole global batch, so any number of processes and a resumed run see the
    same batches."""
    images = np.fromiter(itertools.islice(images_stream, args.batch_size), dtype=np.int64, count=args.batch_size)
    rows = images * views + epoch_views(step // steps_per_epoch)[images]
    labels = torch.from_numpy(token_labels[rows].astype(np.int64))
    labels = drop_labels(labels, config.num_classes, args.label_drop, common.step_generator(args.seed, step))
    local = slice(dist_state.rank * args.batch_size // dist_state.world_size, (dist_state.rank + 1) * args.batch_size // dist_state.world_size)
    idx = torch.from_numpy(token_codes[rows[local]].astype(np.int64))
    return idx.to(device, non_blocking=True), labels[local].to(device, non_blocking=True)


@torch.no_grad()
def save_sample_grid(path):
    """16 samples of classes 0, 1, ... (cycling), from a fixed seed so grids of different steps compare."""
    net = ema_model or model
    was_training = net.training
    net.eval()
    labels = torch.arange(16, device=device) % config.num_classes
    with autocast:
        codes = net.generate(labels, cfg_scale=args.sample_cfg, generator=torch.Generator(device).manual_seed(args.seed))
        images = tok.decode(codes)
    save_grid(images, path, ncol=8)
    net.train(was_training)


def new_sums():
    return {'loss_per_position': torch.zeros(N, device=device), 'acc_per_position': torch.zeros(N, device=device),
            'grad_norm': torch.zeros((), device=device)}


@torch.no_grad()
def loss_of_current_weights(idx, labels):
    """The loss of the weights about to be saved, on the last micro-batch (common.check_checkpoint_finite says why)."""
    model.eval()
    with autocast:
        _, token_loss = model(idx, labels, with_loss=True)
    model.train()
    return token_loss.mean()


def check_finite_before_saving(idx, labels):
    """On every rank, before ckpt.pt or best.pt is written: stop unless losses, weights and optimizer state are finite."""
    states = [model.state_dict(), optimizer.state_dict()] + ([ema_model.state_dict()] if ema_model is not None else [])
    common.check_checkpoint_finite(step, ckpt_path, finite, loss_of_current_weights(idx, labels), *states)


@torch.no_grad()
def estimate_nll(net, codes, labels):
    """Mean negative log-likelihood per position (N,) in nats of token rows (codes (R, N), labels (R,)), teacher
    forced with their true labels, in eval mode; each process scores rows rank, rank + world, ... and the
    sums are reduced."""
    was_training = net.training
    net.eval()
    total = torch.zeros(N + 1, dtype=torch.float64, device=device)  # per-position sums, then the row count
    mine = np.arange(dist_state.rank, len(codes), dist_state.world_size)
    for start in range(0, len(mine), args.eval_batch):
        rows = mine[start:start + args.eval_batch]
        idx = torch.from_numpy(codes[rows].astype(np.int64)).to(device)
        with autocast:
            _, token_loss = net(idx, torch.from_numpy(labels[rows].astype(np.int64)).to(device), with_loss=True)
        total[:N] += token_loss.double().sum(0)
        total[N] += len(rows)
    if dist_state.world_size > 1:
        dist.all_reduce(total)
    net.train(was_training)
    return (total[:N] / total[N]).tolist()


def evaluate():
    """The log record of one evaluation: NLL per sequence and per position of each evaluation set."""
    record = {'step': step}
    for name, (codes, labels) in eval_sets.items():
        per_position = estimate_nll(ema_model or model, codes, labels)
        record[f'{name}_nll'] = sum(per_position)
        record[f'{name}_nll_per_position'] = [round(v, 4) for v in per_position]
    if has_val:
        record['val_over_train'] = record['val_nll'] / record['train_nll']
    return record


def save_checkpoint(path, val_nll, keep=0):
    common.save_and_keep({
        'kind': 'generator', 'config': dataclasses.asdict(config), 'args': vars(args), 'step': step,
        'model': model.state_dict(), 'ema': ema_model.state_dict() if ema_model is not None else None,
        'optimizer': optimizer.state_dict(), 'rng': common.rng_state(), 'val_nll': val_nll,
        'best_val_nll': best_val_nll, 'tokenizer': tokenizer_record, 'tokens': os.path.abspath(tokens_path),
        'classes': token_meta['classes'],
    }, path, step, keep)


# ----------------------------------------------------------------------------- training
sampler = ResumableSampler(n_images, args.batch_size, seed=args.seed, start_step=step)
steps_per_epoch = sampler.steps_per_epoch
images_stream = iter(sampler)
finite = torch.ones((), dtype=torch.bool, device=device)
sums = new_sums()
flops_per_sample = model.train_flops_per_sample()
last_val_nll, last_loss = None, None
checkpoints = common.CheckpointSchedule(args.ckpt_every, args.max_steps, args.ckpt_minutes, device)
t_last, step_last = time.time(), step
pbar = common.progress_bar(total=args.max_steps, initial=step, disable=not dist_state.master)
while step < args.max_steps:
    idx, labels = next_batch(images_stream, step)
    for group in optimizer.param_groups:
        group['lr'] = lr_at(step)
    optimizer.zero_grad(set_to_none=True)
    for micro_step, (micro_idx, micro_labels) in enumerate(zip(idx.chunk(args.grad_accum), labels.chunk(args.grad_accum))):
        common.seed_model_randomness(args.seed, step, dist_state.rank * args.grad_accum + micro_step)
        with common.gradient_sync(train_model, micro_step, args.grad_accum):
            with autocast:  # float32 logits (B, N, K), logits[:, i] predicts idx[:, i]; token_loss (B, N)
                logits, token_loss = train_model(micro_idx, micro_labels, with_loss=True)
            loss = token_loss.mean()
            (loss / args.grad_accum).backward()  # the gradient of the mean over the process's share
        # everything stays on the device until log time: no host sync per step
        finite &= torch.isfinite(loss.detach())
        sums['loss_per_position'] += token_loss.detach().mean(0) / args.grad_accum
        sums['acc_per_position'] += (logits.detach().argmax(-1) == micro_idx).float().mean(0) / args.grad_accum
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
    optimizer.step()
    if ema_model is not None:
        common.ema_update(ema_model, model, common.ema_decay(args.ema, step))
    sums['grad_norm'] += grad_norm.detach()
    step += 1
    pbar.update(1)

    log_step = step % args.log_every == 0 or step == args.max_steps
    if log_step:
        if not common.all_finite(finite):
            common.stop_on_nonfinite(step, ckpt_path)
        n = step - step_last
        packed = torch.cat([sums['loss_per_position'], sums['acc_per_position'], sums['grad_norm'][None]]) / n
        if dist_state.world_size > 1:
            dist.all_reduce(packed)
            packed /= dist_state.world_size
        packed = packed.tolist()
        loss_pos, acc_pos, mean_grad_norm = packed[:N], packed[N:2 * N], packed[-1]
        record = {'step': step, 'lr': lr_at(step - 1), 'loss': sum(loss_pos) / N, 'acc': sum(acc_pos) / N,
                  'grad_norm': mean_grad_norm,
                  **common.speed_record(n, time.time() - t_last, args.batch_size, flops_per_sample, dist_state),
                  'loss_per_position': [round(v, 5) for v in loss_pos], 'acc_per_position': [round(v, 5) for v in acc_pos]}
        if dist_state.master:
            common.log_jsonl(log_path, record)
            pbar.set_postfix({k: f"{record[k]:.4g}" for k in ('loss', 'acc', 'grad_norm')})
        sums, last_loss = new_sums(), record['loss']
        t_last, step_last = time.time(), step
    if (args.eval_every and step % args.eval_every == 0) or step == args.max_steps:
        record = evaluate()
        last_val_nll = record.get('val_nll')
        if dist_state.master:
            common.log_jsonl(log_path, record)
            plot.plot_log(log_path, os.path.join(args.out_dir, 'nll.png'))
            pbar.write(f"step {step}: NLL per sequence train {record['train_nll']:.2f}"
                       + (f", val {last_val_nll:.2f} ({record['val_over_train']:.3f}x)" if has_val else ''))
        if last_val_nll is not None and last_val_nll < best_val_nll:
            best_val_nll = last_val_nll
            check_finite_before_saving(micro_idx, micro_labels)
            if dist_state.master:
                save_checkpoint(best_path, last_val_nll)
        t_last = time.time()  # the evaluation is not training time
    if dist_state.master and args.sample_every and (step % args.sample_every == 0 or step == args.max_steps):
        save_sample_grid(os.path.join(args.out_dir, f'samples_{step:07d}.png'))
    if checkpoints.due(step, log_step):
        check_finite_before_saving(micro_idx, micro_labels)
        if dist_state.master:
            save_checkpoint(ckpt_path, last_val_nll, args.keep)
pbar.close()
if dist_state.master:
    print(f"wrote {ckpt_path} (step {step})"
          + (f" and {best_path} (validation NLL {best_val_nll:.2f} nats)" if os.path.exists(best_path) else "")
          + f" in {common.format_duration(time.time() - run_start)}"
          + (f"; last logged loss {last_loss:.4f} nats per token" if last_loss is not None else ""))
del train_model  # its DDP wrapper holds the process group (common.cleanup_distributed)
common.cleanup_distributed()
