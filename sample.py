"""
Sample class-conditional images from a train_gen.py checkpoint, decoded by the tokenizer it was trained on.

    python sample.py --ckpt out/gen/ckpt.pt --out out/samples/d16 --classes all --per_class 50   # 50,000 images for FID
    python sample.py --ckpt out/gen/ckpt.pt --classes 207,360,387 --per_class 8 --truncate 16 --progressive 3
    python sample.py --ckpt out/gen/ckpt.pt --classes cat,dog --per_class 8   # class folder names

VAR evaluates FID with --cfg 1.5 --cfg_ramp --top_k 900 --top_p 0.96 (its guidance always ramps over scales).
sweep.py picks these settings by FID on a held-out seed and writes them as flags for this script.
Writes to --out:
  samples_{n}x{H}x{W}x3.npz  ADM format: arr_0 uint8 (n, H, W, 3) and labels (n,), read by fid.py and ADM's evaluator
  grid.png                   up to 8 samples (columns) of each of the first 8 classes (rows, labelled id and name)
  png/{i:06d}_{class}.png    with --png, every sample
  progressive.png            with --progressive [K]: the first K (4) samples, one per row, decoded from their first
                             1, 2, ..., n tokens (left to right; the last column is all n)
  sample_args.json           the settings, checkpoint step, tokenizer, and the sampling loop's seconds and images/s
--truncate k decodes each sample from its first N - k tokens only (Table 3); the k tokens are never generated.
Reproducibility: batch b samples with a generator seeded by (--seed, b), so the same --seed, --batch_size and
device give the same images; another batch size gives other (equally valid) samples.
"""
import argparse
import contextlib
import json
import math
import os
import time

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

import common
import fast_sample
import tokens
from data import save_grid, save_png, to_float, to_uint8
from generator import GPT, GPTConfig
from tokenizer import Tokenizer, save_coarse_to_fine


def add_model_args(parser):
    """The flags that pick the generator, its tokenizer and where they run (sample.py, superres.py, sweep.py)."""
    parser.add_argument('--ckpt', required=True, help='generator checkpoint written by train_gen.py')
    parser.add_argument('--tok_ckpt', help="tokenizer checkpoint (default: the one the generator's checkpoint names)")
    parser.add_argument('--no_ema', action='store_true', help='use the raw weights even when the checkpoint has EMA weights')
    parser.add_argument('--bf16', action=argparse.BooleanOptionalAction, default=None, help='bf16 autocast (default: on with CUDA)')
    parser.add_argument('--device', default='auto')


def add_sampling_args(parser, several=False):
    """The sampling flags, checked by check_sampling_settings; several=True: each takes a list of values (sweep.py's
    grid), --cfg_ramp as off / on (bare: on)."""
    def add(flag, type, default, help=None):
        parser.add_argument(flag, type=type, nargs='+' if several else None, default=[default] if several else default,
                            help=help)
    add('--cfg', float, 1.5, "guidance scale s: (1 + s) cond - s uncond; 0 is plain conditional")
    ramp_help = 'guidance ramps linearly from 0 (first token) to --cfg (last)'
    if several:
        parser.add_argument('--cfg_ramp', nargs='*', choices=('off', 'on'), default=['off'],
                            help=f'{ramp_help}: off, on, or both to sweep it (bare flag: on)')
    else:
        parser.add_argument('--cfg_ramp', action='store_true', help=ramp_help)
    add('--temperature', float, 1.0)
    add('--top_k', int, 0, '0: off')
    add('--top_p', float, 0.0, '0: off')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=common.HelpFormatter)
    add_model_args(parser)
    parser.add_argument('--out', default='out/samples', help='output folder')
    parser.add_argument('--classes', default='all', help="'all', or class names (the training data's folder names) or "
                        "ids (their place in the sorted names, from 0), comma-separated: cat,dog or 3,5")
    parser.add_argument('--per_class', type=int, default=50)
    add_sampling_args(parser)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--batch_size', type=int, default=256, help='larger batches sample faster on a GPU (docs/performance.md)')
    parser.add_argument('--png', action='store_true', help='also write every sample as a PNG')
    parser.add_argument('--truncate', type=int, default=0, help='decode from the first N - k tokens')
    parser.add_argument('--progressive', type=int, nargs='?', const=4, default=0, metavar='K',
                        help='coarse-to-fine strips of the first K samples (bare flag: 4; at most one batch)')
    parser.add_argument('--compile', action='store_true', help="torch.compile the sampler's block math and the decoder "
                        "(GPU; pays off over many batches, see bench.py sample)")
    return parser.parse_args(argv)


def device_and_bf16(args):
    """--device ('auto': CUDA when there is one) and --bf16 (default: on with CUDA)."""
    if args.device != 'auto':
        common.check_device(args.device)
    device = torch.device(args.device if args.device != 'auto' else 'cuda' if torch.cuda.is_available() else 'cpu')
    return device, common.bf16_autocast_on(args.bf16, device)


def check_range(flag, values, ok, allowed):
    """Stops with a message naming the values of `flag` (one value or a list of them) that are not ok."""
    bad = [v for v in (values if isinstance(values, list) else [values]) if not ok(v)]
    if bad:
        raise common.UserError(f"{flag} {' '.join(map(str, bad))}: out of range, use {allowed}")


def check_sampling_settings(vocab_size, cfg, temperature, top_k, top_p):
    """The settings of add_sampling_args' flags, single values or lists of them: stops with a message naming the
    bad value before anything is sampled (sample_batches checks its own, for callers other than the scripts)."""
    check_range('--top_k', top_k, lambda k: 0 <= k <= vocab_size, f'0 (off) .. K={vocab_size}')
    check_range('--top_p', top_p, lambda p: 0 <= p <= 1, '0 (off) .. 1')
    check_range('--temperature', temperature, lambda t: t > 0, 'a value above 0')
    check_range('--cfg', cfg, math.isfinite, 'a finite guidance scale (0: plain conditional)')


def check_settings(args, n_tokens, vocab_size):
    """sample.py's and sweep.py's settings, before anything is sampled: as check_sampling_settings, and
    --per_class, --batch_size and --truncate (single values or lists of them)."""
    if args.per_class < 1 or args.batch_size < 1:
        raise common.UserError(f"--per_class {args.per_class} --batch_size {args.batch_size}: both must be at least 1")
    check_range('--truncate', args.truncate, lambda k: 0 <= k < n_tokens,
                f'0..{n_tokens - 1} (decoding must keep at least one of the N={n_tokens} tokens)')
    check_sampling_settings(vocab_size, args.cfg, args.temperature, args.top_k, args.top_p)


def load_models(ckpt_path, tok_path=None, device='cpu', no_ema=False):
    """-> (generator, tokenizer, generator checkpoint): the generator (its EMA weights unless no_ema) and the
    tokenizer it was trained on, checked to be that very file; stops with a message naming the fix."""
    try:
        ckpt = common.load_checkpoint(ckpt_path, 'generator')
    except FileNotFoundError as e:
        raise common.UserError(f"--ckpt: {e}")
    except ValueError as e:
        raise common.UserError(f"--ckpt: {e}. --ckpt takes the generator; its tokenizer is found from it (or pass --tok_ckpt)")
    gen_config = GPTConfig(**ckpt['config'])
    gpt = GPT(gen_config)
    gpt.load_state_dict(ckpt['model'] if no_ema else common.ema_or_model(ckpt))
    gpt = gpt.to(device).eval()
    trained_with = ckpt['tokenizer']
    N, K = gen_config.n_tokens, gen_config.vocab_size

    path = tok_path or trained_with['path']
    if not os.path.isfile(path):
        raise common.UserError(f"tokenizer checkpoint {path!r} does not exist" if tok_path else
                               f"tokenizer checkpoint {path!r} named by {ckpt_path!r} does not exist: "
                               f"pass --tok_ckpt with the tokenizer the generator was trained on")
    try:
        tok = Tokenizer.from_checkpoint(path, device)
    except ValueError as e:
        raise common.UserError(f"--tok_ckpt: {e}")
    if (tok.config.n_tokens, tok.config.codebook_size) != (N, K):
        raise common.UserError(f"tokenizer {path!r} has N={tok.config.n_tokens} tokens and K={tok.config.codebook_size} codes, but the "
                               f"generator {ckpt_path!r} was trained on N={N}, K={K}: pass --tok_ckpt {trained_with['path']}")
    if not is_tokenizer_file(tok, path, trained_with['sha256']):
        raise common.UserError(f"tokenizer {path!r} is not the checkpoint the generator was trained on ({trained_with['path']!r}, "
                               f"sha256 {trained_with['sha256'][:12]}); its codes would decode wrongly: pass that one as --tok_ckpt")
    tok.path = path
    return gpt, tok, ckpt


def is_tokenizer_file(tok, path, sha256):
    """Whether tok, loaded from the checkpoint at path, reads the codes of the file whose sha256 a generator recorded:
    that file, its weights exported by scripts/export_weights.py (which records the sha256 of the file it came from),
    or a decoder fine-tuning of it (train_tok.py --init_from, which keeps the codes and records their files)."""
    return (common.file_sha256(path) == sha256 or (tok.exported_from or {}).get('sha256') == sha256
            or sha256 in tok.codes_from)


def describe_checkpoint(path, ckpt):
    """'PATH (step S, validation NLL V nats)' for the log lines of sample.py and sweep.py."""
    val_nll = ckpt.get('val_nll')
    return f"{path} (step {ckpt['step']}, " + (f"validation NLL {val_nll:.2f} nats)" if val_nll is not None else
                                              "no validation NLL: trained without --val_data)")


def report_memorisation(ckpt, codes):
    """The memorisation probe of generated codes (B, n) against the checkpoint's training token file, printed: the
    share of samples whose first 4, 8 and n tokens (all they hold, n = N or N - --truncate) copy a training row."""
    shares = tokens.memorisation_probe(ckpt.get('tokens'), codes, codes.shape[1])
    if shares is not None:
        print('copied from a training row: ' + ', '.join(f"first {k} tokens {100 * v:.2f}%" for k, v in shares.items()))
    return shares


def generator_classes(ckpt, num_classes):
    """The generator's class names (its training data's sorted class folders), or the ids as text for a checkpoint
    that does not store them or a folder without class folders (one class)."""
    names = ckpt.get('classes') or []
    return names if len(names) == num_classes else [str(i) for i in range(num_classes)]


def class_label(class_id, name):
    """'3 cat', or '3' where the name is the id itself."""
    return name if name == str(class_id) else f"{class_id} {name}"


def parse_classes(spec, names):
    """--classes 'all', or names and ids like 'cat,dog' or '1,2,3' -> list of class ids; a name is read as a name
    before it is read as an id."""
    if spec == 'all':
        return list(range(len(names)))
    classes, unknown = [], []
    for item in spec.split(','):
        if item in names:
            classes.append(names.index(item))
        elif item.isdigit() and int(item) < len(names):
            classes.append(int(item))
        else:
            unknown.append(item)
    if unknown:
        listed = ', '.join(class_label(i, name) for i, name in enumerate(names[:20]))
        raise common.UserError(f"--classes: {', '.join(unknown)} is no class of this generator, whose {len(names)} classes are, "
                         f"by id and name: {listed}{', ...' if len(names) > 20 else ''}")
    return classes


def label_rows(path, labels, row_height, pad=2):
    """Rewrite the grid PNG at path (save_grid's layout) with each row's label on its left, in PIL's default font."""
    grid = Image.open(path)
    font = ImageFont.load_default()
    boxes = [ImageDraw.Draw(grid).textbbox((0, 0), label, font=font) for label in labels]
    margin = max(box[2] for box in boxes) + 2 * pad
    labelled = Image.new('RGB', (grid.width + margin, grid.height), 'white')
    labelled.paste(grid, (margin, 0))
    draw = ImageDraw.Draw(labelled)
    for row, (label, box) in enumerate(zip(labels, boxes)):
        top = pad + row * (row_height + pad) + (row_height - box[3] - box[1]) // 2
        draw.text((pad, top), label, fill='black', font=font)
    save_png(np.asarray(labelled), path)  # whole or absent, as every PNG written here


@torch.no_grad()
def sample_batches(gpt, tok, labels, batch_size, seed, n_keep, cfg_scale=0.0, cfg_ramp=False, temperature=1.0, top_k=0,
                   top_p=0.0, bf16=False, compile=False):
    """Yields (start, codes, uint8 images) per batch of `labels` (a numpy int array). Batch b draws from a
    generator seeded by (seed, b); the codes are the first n_keep tokens, decoded from that prefix alone.
    On CUDA batch b decodes, and its images go to the host, on a side stream while batch b + 1 samples, so the
    GPU never idles during the host copy (bench.py sample's 'sample.py img/s': 1,576 -> 1,996 at batch 256).
    Settings out of range (a NaN cfg_scale samples all-zero codes) raise a common.UserError at the first batch."""
    check_sampling_settings(gpt.config.vocab_size, cfg_scale, temperature, top_k, top_p)
    device = gpt.pos_emb.device
    decode = torch.compile(tok.decode) if compile else tok.decode
    overlap = device.type == 'cuda'
    decode_stream = torch.cuda.Stream(device) if overlap else None
    on_decode_stream = (lambda: torch.cuda.stream(decode_stream)) if overlap else contextlib.nullcontext

    def to_host(start, codes, decoded):
        with on_decode_stream():  # the copy to the host waits for the decode stream only
            return start, codes, to_uint8(decoded)

    pending = None  # (start, codes, decoded images) of the batch being decoded
    for batch, start in enumerate(range(0, len(labels), batch_size)):
        batch_labels = torch.from_numpy(labels[start:start + batch_size]).to(device)
        generator = common.step_generator(seed, batch, device)
        # autocast per batch, not around the loop: held across a yield it would leak into the caller's code
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            # static KV cache + CUDA graphs; on the CPU the same tokens as the reference loop, gpt.generate
            codes = fast_sample.generate(gpt, batch_labels, cfg_scale=cfg_scale, cfg_ramp=cfg_ramp, temperature=temperature,
                                         top_k=top_k, top_p=top_p, generator=generator, n_steps=n_keep, compile=compile)
        if pending is not None:
            yield to_host(*pending)  # waits for batch b - 1 only; batch b is queued behind it
        if overlap:
            decode_stream.wait_stream(torch.cuda.current_stream(device))
        with on_decode_stream(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            pending = (start, codes, decode(codes))  # codes stay referenced until decoded: no early reuse
        if not overlap:  # nothing to overlap with: hand the batch over now
            yield to_host(*pending)
            pending = None
    if pending is not None:
        yield to_host(*pending)


def check_fits_in_memory(n_samples, image_size, n_keep):
    """Stop before allocating when the labels, images and codes of n_samples cannot fit in this machine's memory."""
    needed = n_samples * (8 + image_size * image_size * 3 + n_keep * 8)
    available = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
    if needed > available:
        raise common.UserError(f"--per_class: {n_samples:,} samples need {needed / 2**30:,.1f} GiB of memory for their "
                               f"labels, images and codes, this machine has {available / 2**30:,.1f} GiB: lower --per_class "
                               f"(or sample in several runs with other --seed values)")


def main(argv=None):
    args = parse_args(argv)
    common.check_writable(os.path.join(args.out, 'png') if args.png else args.out, '--out')  # before any sampling
    device, use_bf16 = device_and_bf16(args)
    common.use_cpu_cores(device)
    gpt, tok, ckpt = load_models(args.ckpt, args.tok_ckpt, device, args.no_ema)
    N = gpt.config.n_tokens
    names = generator_classes(ckpt, gpt.config.num_classes)
    classes = parse_classes(args.classes, names)
    check_settings(args, N, gpt.config.vocab_size)
    n_keep = N - args.truncate
    H = tok.config.image_size
    check_fits_in_memory(len(classes) * args.per_class, H, n_keep)
    labels = np.repeat(np.array(classes, dtype=np.int64), args.per_class)
    shown_first_batch = min(args.batch_size, len(labels))
    if not 0 <= args.progressive <= shown_first_batch:
        raise common.UserError(f"--progressive {args.progressive}: the strips show samples of the first batch, here "
                               f"{shown_first_batch}: pass --progressive {shown_first_batch} or less, or a larger "
                               f"--batch_size / --per_class")
    images = np.empty((len(labels), H, H, 3), dtype=np.uint8)
    codes = np.empty((len(labels), n_keep), dtype=np.int64)
    print(f"{len(labels)} samples of {len(classes)} class(es) from {describe_checkpoint(args.ckpt, ckpt)}, decoding "
          f"{n_keep}/{N} tokens with {tok.path}, cfg {args.cfg}{' ramped' if args.cfg_ramp else ''}, on {device}, "
          f"bf16 {use_bf16}")

    batches = sample_batches(gpt, tok, labels, args.batch_size, args.seed, n_keep, args.cfg, args.cfg_ramp,
                             args.temperature, args.top_k, args.top_p, use_bf16, args.compile)
    started = time.perf_counter()
    with common.progress_bar(total=len(labels), unit='img') as pbar:
        for start, batch_codes, batch_images in batches:
            images[start:start + len(batch_codes)] = batch_images
            codes[start:start + len(batch_codes)] = batch_codes.cpu().numpy()
            if start == 0 and args.progressive:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                    save_coarse_to_fine(tok, batch_codes[:args.progressive], os.path.join(args.out, 'progressive.png'))
            if args.png:  # each PNG whole or absent: a full disk stops at the one it names
                for i in range(start, start + len(batch_codes)):
                    save_png(images[i], os.path.join(args.out, 'png', f'{i:06d}_{labels[i]}.png'))
            pbar.update(len(batch_codes))
    sampling_s = time.perf_counter() - started  # generation, decoding and the copy to the host, first-call setup included
    copied = report_memorisation(ckpt, codes)

    npz_path = os.path.join(args.out, f'samples_{len(images)}x{H}x{H}x3.npz')
    common.atomic_write(npz_path, lambda f: np.savez(f, arr_0=images, labels=labels))
    shown_classes, shown_per_class = min(8, len(classes)), min(8, args.per_class)
    shown = [c * args.per_class + j for c in range(shown_classes) for j in range(shown_per_class)]
    grid_path = os.path.join(args.out, 'grid.png')
    save_grid(to_float(torch.from_numpy(images[shown]).permute(0, 3, 1, 2), 'cpu'), grid_path, ncol=shown_per_class)
    label_rows(grid_path, [class_label(c, names[c]) for c in classes[:shown_classes]], H)
    settings = {**vars(args), 'n': len(images), 'generator_step': ckpt['step'], 'generator_val_nll': ckpt.get('val_nll'),
                'copied_share': copied, 'tokenizer': tok.path, 'device': str(device), 'bf16': use_bf16,
                'sampling_s': sampling_s, 'images_per_s': len(labels) / sampling_s}
    common.atomic_write(os.path.join(args.out, 'sample_args.json'), lambda f: f.write(json.dumps(settings, indent=1).encode()))
    written = [npz_path, grid_path] + [os.path.join(args.out, name) for name, on in (('progressive.png', args.progressive),
                                                                                   ('png/', args.png)) if on]
    print(f"wrote {', '.join(written)}: {len(labels)} images sampled in {sampling_s:.1f} s "
          f"({len(labels) / sampling_s:.0f} images/s)")


if __name__ == '__main__':
    common.exit_on_user_error()
    main()
