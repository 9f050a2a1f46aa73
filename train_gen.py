"""
Train the SpectralAR generator (sec. 3.3) on the tokens of a trained Nested Spectral Tokenizer, with VAR's recipe.

    python train_gen.py --preset tiny --tok_ckpt out/tok/ckpt.pt --data DIR --max_steps 200   # CPU smoke run
    torchrun --nproc_per_node=8 train_gen.py --preset d16 --tok_ckpt out/tok/ckpt.pt --data /imagenet/train --batch_size 768

First pass: every training image and its horizontal flip are encoded once into a token file (--tokens,
default OUT_DIR/tokens.npz) holding `codes` uint16 (2M, N) (row 2i: image i, row 2i+1: its flip),
`labels` int16 (2M,) and `meta`, a JSON string (tokenizer path, sha256 and config, N, K, image size,
data root, class names, counts). Encoding goes chunk by chunk into TOKENS.partial/ and a rerun continues
where it stopped; each process of a torchrun encodes its share of the chunks. A token file is only
reused with the tokenizer checkpoint it was made with (same sha256).

Training reads tokens only: teacher-forced cross-entropy, label dropout for CFG, AdamW (0.9, 0.95) with
wd 0.05 off biases/positions/scales, lr = --lr x global_batch / 256 with linear warmup and linear decay
to --lr_end of it, grad clip 2.0. The log holds loss and top-1 accuracy per token position.
"""
import argparse
import copy
import dataclasses
import itertools
import json
import os
import shutil
import time

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import common
from data import ImageFolder, ResumableSampler, collate_skip_bad, save_grid, to_float
from generator import GPT, PRESETS, GPTConfig, drop_labels
from tokenizer import Tokenizer

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument('--tok_ckpt', required=True, help='tokenizer checkpoint written by train_tok.py')
parser.add_argument('--data', help='ImageFolder root (<class>/<image> files); needed only to encode the token file')
parser.add_argument('--tokens', help='token file (default: OUT_DIR/tokens.npz); encoded first when missing')
parser.add_argument('--out_dir', default='out/gen')
parser.add_argument('--preset', default='d16', help=' | '.join(PRESETS))
parser.add_argument('--batch_size', type=int, default=256, help='global batch over all processes')
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
parser.add_argument('--sample_every', type=int, default=5000, help='steps between sample grid PNGs (0: never)')
parser.add_argument('--sample_cfg', type=float, default=1.5, help='CFG scale of the sample grids')
parser.add_argument('--resume', nargs='?', const='auto', help='checkpoint to resume (no value: out_dir/ckpt.pt)')
parser.add_argument('--encode_only', action='store_true', help='write the token file and exit')
parser.add_argument('--encode_batch', type=int, default=256, help='images per encoding batch and process (x2 with flips)')
parser.add_argument('--encode_chunk', type=int, default=10_000, help='images per chunk (an interrupted encoding resumes by chunk)')
parser.add_argument('--encode_bf16', action='store_true',
                    help='encode under bf16 autocast: faster, but it changed 23%% of the codes of a small CIFAR tokenizer (default: fp32)')
parser.add_argument('--workers', type=int, default=8, help='image loading processes for encoding')
args = parser.parse_args()

# ----------------------------------------------------------------------------- setup
dd = common.setup_distributed(args.device)
device = dd.device
use_bf16 = device.type == 'cuda' if args.bf16 is None else args.bf16
autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)
ckpt_path = os.path.join(args.out_dir, 'ckpt.pt')
log_path = os.path.join(args.out_dir, 'log.jsonl')
tokens_path = args.tokens or os.path.join(args.out_dir, 'tokens.npz')


def barrier():
    if dist.is_initialized():
        dist.barrier()


try:
    tok = Tokenizer.from_checkpoint(args.tok_ckpt, device)
except (FileNotFoundError, ValueError) as e:
    raise SystemExit(f"--tok_ckpt: {e}")
tok_sha256 = common.file_sha256(args.tok_ckpt)
tokenizer_record = {'path': os.path.abspath(args.tok_ckpt), 'sha256': tok_sha256, 'config': dataclasses.asdict(tok.cfg)}
N, K = tok.cfg.n_tokens, tok.cfg.codebook_size
assert K <= 2 ** 16, f"codebook of {K} codes does not fit the token file's uint16"


def refuse_other_tokenizer(made_with, what):
    """The codes of one tokenizer mean nothing to another: stop with the two ways out."""
    if made_with['tok_sha256'] != tok_sha256:
        raise SystemExit(f"{what} was made with tokenizer {made_with['tok_ckpt']!r} (sha256 {made_with['tok_sha256'][:12]}), "
                         f"not with --tok_ckpt {args.tok_ckpt!r} (sha256 {tok_sha256[:12]}): delete {what} to encode "
                         f"again, or pass --tok_ckpt {made_with['tok_ckpt']}")


def encode_dataset():
    """Encode --data and its flips into tokens_path, chunk by chunk; finished chunks of an interrupted run are kept."""
    if args.data is None:
        raise SystemExit(f"token file {tokens_path!r} does not exist: pass --data IMAGE_FOLDER to encode it")
    dataset = ImageFolder(args.data, tok.cfg.image_size)
    assert len(dataset.classes) < 2 ** 15, "labels are stored as int16"
    partial = tokens_path + '.partial'
    settings = {'tok_ckpt': os.path.abspath(args.tok_ckpt), 'tok_sha256': tok_sha256, 'tok_config': dataclasses.asdict(tok.cfg),
                'n_tokens': N, 'codebook_size': K, 'image_size': tok.cfg.image_size, 'data': os.path.realpath(args.data),
                'n_images': len(dataset), 'classes': dataset.classes, 'chunk_size': args.encode_chunk, 'bf16': args.encode_bf16}
    settings_path = os.path.join(partial, 'settings.json')
    if os.path.exists(settings_path):
        with open(settings_path) as f:
            started = json.load(f)
        refuse_other_tokenizer(started, partial)
        changed = [k for k in settings if k != 'tok_ckpt' and started.get(k) != settings[k]]
        if changed:
            raise SystemExit(f"the interrupted encoding in {partial!r} used other {', '.join(changed)}: "
                             f"delete {partial!r} or rerun with its settings")
    elif dd.master:
        os.makedirs(partial, exist_ok=True)
        common.atomic_write(settings_path, lambda f: f.write(json.dumps(settings).encode()))

    def chunk_path(k):
        return os.path.join(partial, f'chunk_{k:06d}.npz')

    n_chunks = -(-len(dataset) // args.encode_chunk)
    todo = [k for k in range(n_chunks) if not os.path.exists(chunk_path(k))]
    if dd.master and len(todo) < n_chunks:
        print(f"resuming the encoding in {partial}: {n_chunks - len(todo)} of {n_chunks} chunks already done")
    barrier()  # every process has listed `todo` before any writes a chunk, so all agree on the split
    mine = todo[dd.rank::dd.world_size]

    # one loader over all my chunks; batches never straddle two chunks
    batches, batch_chunk = [], []
    for k in mine:
        start, end = k * args.encode_chunk, min((k + 1) * args.encode_chunk, len(dataset))
        for s in range(start, end, args.encode_batch):
            batches.append(list(range(s, min(s + args.encode_batch, end))))
            batch_chunk.append(k)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=args.workers,
                                         collate_fn=collate_skip_bad, pin_memory=device.type == 'cuda')
    pbar = common.progress_bar(total=sum(map(len, batches)), desc='encode', unit='img', disable=not dd.master)
    codes, labels, n_bad = [], [], 0
    for i, (images, batch_labels, bad) in enumerate(loader):
        if len(images):
            x = to_float(images, device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.encode_bf16):
                both = tok.encode(torch.cat([x, x.flip(-1)]))
            codes.append(both.view(2, len(x), N).transpose(0, 1).reshape(-1, N).int().cpu().numpy().astype(np.uint16))
            labels.append(batch_labels.repeat_interleave(2).numpy().astype(np.int16))
        n_bad += bad
        pbar.update(len(batches[i]))
        if i + 1 == len(batches) or batch_chunk[i + 1] != batch_chunk[i]:
            chunk = dict(codes=np.concatenate(codes or [np.zeros((0, N), np.uint16)]),
                         labels=np.concatenate(labels or [np.zeros(0, np.int16)]), n_bad=n_bad)
            common.atomic_write(chunk_path(batch_chunk[i]), lambda f: np.savez(f, **chunk))
            codes, labels, n_bad = [], [], 0
    pbar.close()
    barrier()

    if dd.master:
        parts = {'codes': [], 'labels': []}
        n_bad = 0
        for k in range(n_chunks):
            with np.load(chunk_path(k)) as chunk:
                parts['codes'].append(chunk['codes'])
                parts['labels'].append(chunk['labels'])
                n_bad += int(chunk['n_bad'])
        codes, labels = np.concatenate(parts['codes']), np.concatenate(parts['labels'])
        meta = {**settings, 'n_rows': len(codes), 'n_bad': n_bad}
        common.atomic_write(tokens_path, lambda f: np.savez(f, codes=codes, labels=labels, meta=np.array(json.dumps(meta))))
        shutil.rmtree(partial)
        print(f"wrote {tokens_path}: {len(codes)} token rows of {len(dataset) - n_bad} images and their flips"
              + (f", {n_bad} unreadable image(s) skipped" if n_bad else ""))
    barrier()


def check_token_file(path):
    """The token file's meta, once it is known to match --tok_ckpt and --data (np.load leaves the codes unread)."""
    with np.load(path) as f:
        meta = json.loads(f['meta'].item())
    refuse_other_tokenizer(meta, path)
    if args.data and os.path.realpath(args.data) != meta['data']:
        raise SystemExit(f"{path!r} holds the tokens of {meta['data']!r}, not of --data {args.data!r}: "
                         f"delete it to encode again, or drop --data")
    return meta


if not os.path.exists(tokens_path):
    encode_dataset()
token_meta = check_token_file(tokens_path)
if args.encode_only:
    common.cleanup_distributed()
    raise SystemExit(0)
with np.load(tokens_path) as f:
    token_codes, token_labels = f['codes'], f['labels']

# ----------------------------------------------------------------------------- model
num_classes = max(1, len(token_meta['classes']))  # a folder without class subfolders is one class
torch.manual_seed(args.seed)  # here, not earlier: the encoding's DataLoader draws from the global RNG
resume = None
if args.resume:
    resume = common.load_checkpoint(ckpt_path if args.resume == 'auto' else args.resume, 'generator')
    if resume['tokenizer']['sha256'] != tok_sha256:
        raise SystemExit(f"the checkpoint was trained on the tokens of {resume['tokenizer']['path']!r}, not of "
                         f"--tok_ckpt {args.tok_ckpt!r}: pass that tokenizer or start a new --out_dir")
    cfg = GPTConfig(**resume['config'])
    common.check_resume_args(args, resume['args'], ('preset', 'batch_size'))
else:
    if args.preset not in PRESETS:
        raise SystemExit(f"unknown generator preset {args.preset!r}; choose from {sorted(PRESETS)}")
    cfg = GPTConfig.preset(args.preset, n_tokens=N, vocab_size=K, num_classes=num_classes)
if cfg.num_classes != num_classes:
    raise SystemExit(f"the generator has {cfg.num_classes} classes but the token file {num_classes}")
model = GPT(cfg).to(device)
ema_model = copy.deepcopy(model).eval().requires_grad_(False) if args.ema > 0 else None
optimizer = common.adamw(model, args.lr, (0.9, 0.95), args.weight_decay, model.no_weight_decay())

step = 0
if resume:
    model.load_state_dict(resume['model'])
    if ema_model is not None:
        ema_model.load_state_dict(resume['ema'] or resume['model'])
    optimizer.load_state_dict(resume['optimizer'])
    common.set_rng_state(resume['rng'])
    step = resume['step']
    del resume

peak_lr = args.lr * args.batch_size / 256
warmup = max(1, args.max_steps // 50 if args.warmup is None else args.warmup)
if dd.master:
    os.makedirs(args.out_dir, exist_ok=True)
    print(f"generator {cfg}\n{model.num_params() / 1e6:.1f}M params, {len(token_codes)} token rows of "
          f"{num_classes} classes, peak lr {peak_lr:.3g}, {dd.world_size} process(es) on {device}, bf16 {use_bf16}")
# compile first, then DDP (as nanoGPT): compiling the DDP wrapper splits the graph at every gradient bucket
train_model = torch.compile(model) if args.compile else model
if dd.world_size > 1:
    train_model = DDP(train_model, device_ids=[dd.local_rank] if device.type == 'cuda' else None)


def lr_at(step):
    """VAR's schedule: linear warmup, then linear decay to lr_end x peak at max_steps."""
    if step < warmup:
        return peak_lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, args.max_steps - warmup))
    return peak_lr * (1 - (1 - args.lr_end) * progress)


def next_batch(rows_stream, step):
    """This process's slice of the global batch: token rows and labels, label dropout drawn from (seed, step)
    over the whole global batch, so any number of processes and a resumed run see the same batches."""
    rows = np.fromiter(itertools.islice(rows_stream, args.batch_size), dtype=np.int64, count=args.batch_size)
    labels = torch.from_numpy(token_labels[rows].astype(np.int64))
    labels = drop_labels(labels, cfg.num_classes, args.label_drop, common.step_generator(args.seed, step))
    local = slice(dd.rank * args.batch_size // dd.world_size, (dd.rank + 1) * args.batch_size // dd.world_size)
    idx = torch.from_numpy(token_codes[rows[local]].astype(np.int64))
    return idx.to(device, non_blocking=True), labels[local].to(device, non_blocking=True)


@torch.no_grad()
def save_sample_grid(path):
    """16 samples of classes 0, 1, ... (cycling), from a fixed seed so grids of different steps compare."""
    net = ema_model or model
    was_training = net.training
    net.eval()
    labels = torch.arange(16, device=device) % cfg.num_classes
    with autocast:
        codes = net.generate(labels, cfg_scale=args.sample_cfg, generator=torch.Generator(device).manual_seed(args.seed))
        images = tok.decode(codes)
    save_grid(images, path, ncol=8)
    net.train(was_training)


def new_sums():
    return {'loss_per_position': torch.zeros(N, device=device), 'acc_per_position': torch.zeros(N, device=device),
            'grad_norm': torch.zeros((), device=device)}


def save_checkpoint():
    common.atomic_save({
        'kind': 'generator', 'config': dataclasses.asdict(cfg), 'args': vars(args), 'step': step,
        'model': model.state_dict(), 'ema': ema_model.state_dict() if ema_model is not None else None,
        'optimizer': optimizer.state_dict(), 'rng': common.rng_state(),
        'tokenizer': tokenizer_record, 'tokens': os.path.abspath(tokens_path), 'classes': token_meta['classes'],
    }, ckpt_path)


# ----------------------------------------------------------------------------- training
if args.batch_size % dd.world_size:
    raise SystemExit(f"--batch_size {args.batch_size} must divide by the {dd.world_size} processes")
rows_stream = iter(ResumableSampler(len(token_codes), args.batch_size, seed=args.seed, start_step=step))
finite = torch.ones((), dtype=torch.bool, device=device)
sums = new_sums()
flops_per_sample = model.train_flops_per_sample()
t_last, step_last = time.time(), step
pbar = common.progress_bar(total=args.max_steps, initial=step, disable=not dd.master)
while step < args.max_steps:
    idx, labels = next_batch(rows_stream, step)
    for group in optimizer.param_groups:
        group['lr'] = lr_at(step)
    with autocast:  # float32 logits (B, N, K), logits[:, i] predicts idx[:, i]; token_loss (B, N)
        logits, token_loss = train_model(idx, labels, with_loss=True)
    loss = token_loss.mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
    optimizer.step()
    if ema_model is not None:
        common.ema_update(ema_model, model, common.ema_decay(args.ema, step))

    # everything stays on the device until log time: no host sync per step
    finite &= torch.isfinite(loss.detach())
    sums['loss_per_position'] += token_loss.detach().mean(0)
    sums['acc_per_position'] += (logits.detach().argmax(-1) == idx).float().mean(0)
    sums['grad_norm'] += grad_norm.detach()
    step += 1
    pbar.update(1)

    if step % args.log_every == 0 or step == args.max_steps:
        if not common.all_finite(finite):
            common.stop_on_nonfinite(step, ckpt_path)
        n = step - step_last
        packed = torch.cat([sums['loss_per_position'], sums['acc_per_position'], sums['grad_norm'][None]]) / n
        if dd.world_size > 1:
            dist.all_reduce(packed)
            packed /= dd.world_size
        packed = packed.tolist()
        loss_pos, acc_pos, mean_grad_norm = packed[:N], packed[N:2 * N], packed[-1]
        record = {'step': step, 'lr': lr_at(step - 1), 'loss': sum(loss_pos) / N, 'acc': sum(acc_pos) / N,
                  'grad_norm': mean_grad_norm,
                  **common.speed_record(n, time.time() - t_last, args.batch_size, flops_per_sample, dd),
                  'loss_per_position': [round(v, 5) for v in loss_pos], 'acc_per_position': [round(v, 5) for v in acc_pos]}
        if dd.master:
            common.log_jsonl(log_path, record)
            pbar.set_postfix({k: f"{record[k]:.4g}" for k in ('loss', 'acc', 'grad_norm')})
        sums = new_sums()
        t_last, step_last = time.time(), step
    if dd.master and args.sample_every and (step % args.sample_every == 0 or step == args.max_steps):
        save_sample_grid(os.path.join(args.out_dir, f'samples_{step:07d}.png'))
    if step % args.ckpt_every == 0 or step == args.max_steps:
        if not common.all_finite(finite):
            common.stop_on_nonfinite(step, ckpt_path)
        if dd.master:
            save_checkpoint()
pbar.close()
common.cleanup_distributed()
