"""
Train the Nested Spectral Tokenizer (Algorithm 1 of the paper) with TiTok's single-stage losses.

    python train_tok.py --preset tiny --data ../shared/data/cifar10/train --max_steps 200   # CPU smoke run
    torchrun --nproc_per_node=8 train_tok.py --preset titok_b64 --n_tokens 64 --data /imagenet/train
    torchrun --nproc_per_node=4 train_tok.py ... --grad_accum 2   # the same run on 4 GPUs (docs/scaling.md)

Each step draws a prefix length i per image, asks the decoder to rebuild lowpass(image, w_i) from
tokens 1..i, and adds L2 + VQ + LPIPS (+ hinge GAN once --disc_start is reached).
Table 4's rows: --ablation titok | spectral | causal | full (the default: SpectralAR).
The paper's recipe, TiTok's two stages with proxy codes: --stage 1 --proxy_vqgan maskgit-vqgan-imagenet-f16-256.bin
(cross-entropy with the VQGAN's codes of each prefix's target), then --stage 2 --init_from STAGE1_CKPT (the decoder and
the VQGAN's decoder fine-tuned on pixels, the encoder frozen).
Sharper full reconstructions, departures from Algorithm 1: --full_prefix_prob, --gan_full_only (or --disc_cond),
--lpips_resize. Decoder fine-tuning of a trained tokenizer, the encoder and codebook frozen so that its codes (token
files, generators) stay valid: --init_from TOK_CKPT (stage 0).
"""
import argparse
import contextlib
import copy
import dataclasses
import inspect
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.nn.parallel import DistributedDataParallel as DDP

import common
from data import UNREADABLE_IMAGE_ERRORS, ImageFolder, image_loader, list_images, readable_samples, to_float, to_uint8
from dct import SCHEDULES, lowpass
from losses import LPIPS, LeCamRegularizer, NLayerDiscriminator, hinge_d_loss, hinge_g_loss, masked_mean
from tokenizer import (ABLATIONS, ENCODER_SIDE, PRESETS, TokConfig, Tokenizer, config_of_checkpoint, flops_per_image,
                       proxy_code_loss, sample_prefix_lengths, save_coarse_to_fine)
from tokens import IndexedImages, collate_indexed
from vqgan import WEIGHTS_SOURCE, load_vqgan

common.exit_on_user_error()

DISCRIMINATOR_MIN_SIZE = 24  # NLayerDiscriminator's three stride-2 and two 4x4 convolutions leave no logit below it
DEFAULT_WARMUP = 10_000  # TiTok's; a run shorter than ten times this warms up over a tenth of its steps

parser = argparse.ArgumentParser(description=__doc__, formatter_class=common.HelpFormatter)
parser.add_argument('--data', required=True, help='ImageFolder root: <class>/<image> files')
parser.add_argument('--out_dir', default='out/tok')
parser.add_argument('--preset', choices=PRESETS, help="default: from the images' size, cifar for 32 px, titok_b64 for 256 px "
                    "and larger; tiny is the CPU smoke test")
parser.add_argument('--image_size', type=int, help="override the preset's image size: the images are center-cropped and "
                    "box-downsampled to it, e.g. 16 for CIFAR-10 at half resolution (docs/superres.md)")
parser.add_argument('--patch_size', type=int, help="override the preset's patch size, a divisor of the image size")
parser.add_argument('--n_tokens', type=int, help='override the preset N')
parser.add_argument('--codebook_size', type=int, help='override the preset codebook size K')
parser.add_argument('--code_dim', type=int, help='override the preset code dimension')
parser.add_argument('--commitment', type=float, help='override the preset VQ commitment weight')
parser.add_argument('--ablation', choices=list(ABLATIONS), default='full',
                    help="Table 4's row. titok: full attention among patches and latents in encoder and decoder, all N "
                         "tokens rebuild the full image. spectral: + spectral supervision (prefix i rebuilds "
                         "lowpass(image, w_i), uniform w_i). causal: + the spectral causal mask in encoder and decoder. "
                         "full: + the non-uniform mapping w_i (SpectralAR; the default)")
parser.add_argument('--stage', type=int, choices=(0, 1, 2), default=0,
                    help="TiTok's two-stage recipe with proxy codes (the paper's). 0: single stage on pixels. 1: the decoder "
                         "predicts the --proxy_vqgan VQGAN's code of each patch of every prefix's target (cross-entropy + VQ, "
                         "no pixel losses). 2: from the stage-1 checkpoint --init_from, the encoder and quantizer frozen, the "
                         "decoder and the VQGAN's decoder fine-tuned on pixels through the predicted codes' soft embedding")
parser.add_argument('--proxy_vqgan', help=f"stage 1: the VQGAN weights whose codes are the targets. {WEIGHTS_SOURCE}")
parser.add_argument('--init_from', help="a checkpoint whose EMA weights the run starts from, the encoder side (tokenizer.ENCODER_SIDE) "
                                         "frozen. Stage 2: the stage-1 checkpoint (with its VQGAN decoder). Stage 0: decoder "
                                         "fine-tuning of a trained stage-0 tokenizer; every image keeps its codes, so generators "
                                         "trained on it sample with the new decoder (sample.py --tok_ckpt)")
parser.add_argument('--schedule', choices=SCHEDULES,
                    help="override the row's w_i mapping (full: the preset's, 'nonuniform' = eq. (9) at 256 px, "
                         "'nonuniform_psnr' for 32 px; spectral and causal: 'uniform')")
parser.add_argument('--batch_size', type=int, default=256, help='global batch over all processes and micro-steps')
parser.add_argument('--grad_accum', type=int, default=1,
                    help='micro-steps per optimizer step: each process runs batch_size / (processes x grad_accum) images at a time')
parser.add_argument('--max_steps', type=int, default=500_000, help="the run's length: the learning rate's cosine ends here")
parser.add_argument('--steps_this_run', type=int,
                    help='train at most this many steps now, then checkpoint and stop: a long run in pieces, each '
                         'continued with --resume and the same --max_steps (the schedule spans all of it); --eval_data '
                         'is scored once --max_steps is reached')
parser.add_argument('--full_prefix_prob', type=float, default=0.0,
                    help='extra probability of the full prefix i = N (the full image) over the uniform 1..N')
parser.add_argument('--lr', type=float, default=1e-4)
parser.add_argument('--min_lr', type=float, default=1e-5)
parser.add_argument('--warmup', type=int, help=f'linear warmup steps (default: {DEFAULT_WARMUP:,}, or a tenth of --max_steps if less)')
parser.add_argument('--weight_decay', type=float, default=1e-4)
parser.add_argument('--grad_clip', type=float, default=1.0)
parser.add_argument('--l2_weight', type=float, default=1.0)
parser.add_argument('--lpips_weight', type=float, default=1.0, help='0 turns LPIPS off (no VGG weights needed)')
parser.add_argument('--lpips_resize', type=int, help='upsample images smaller than this (bilinear) before LPIPS, e.g. 224')
parser.add_argument('--gan_weight', type=float, default=0.1)
parser.add_argument('--disc_start', type=int, default=20_000, help='step at which the discriminator and GAN loss start')
parser.add_argument('--lecam_weight', type=float, default=0.001)
parser.add_argument('--disc_cond', action='store_true', help="projection discriminator told each target's cut-off w_i")
parser.add_argument('--disc_resize', type=int,
                    help='upsample images smaller than this (bilinear) before the discriminator, e.g. 128 at 32 px')
parser.add_argument('--gan_full_only', action='store_true', help='GAN losses only on samples whose prefix is the full N')
parser.add_argument('--lpips_path', help='LPIPS weights file (default: search, see losses.py)')
parser.add_argument('--restart_every', type=int, default=500, help='steps between dead-code restarts (0: never)')
parser.add_argument('--ema', type=float, default=0.999)
parser.add_argument('--bf16', action=argparse.BooleanOptionalAction, default=None, help='bf16 autocast (default: on with CUDA)')
parser.add_argument('--compile', action='store_true')
parser.add_argument('--workers', type=int, help='image loading processes (default: from the CPU cores, see common.use_cpu_cores)')
parser.add_argument('--seed', type=int, default=0)
parser.add_argument('--device', default='auto')
parser.add_argument('--log_every', type=int, default=50)
parser.add_argument('--sample_every', type=int, default=2000, help='steps between prefix-reconstruction PNGs (0: never)')
parser.add_argument('--ckpt_every', type=int, default=2000, help='steps between checkpoints (one is always written at --max_steps)')
parser.add_argument('--ckpt_minutes', type=float, help='also checkpoint at the first log step this many minutes after the last checkpoint')
parser.add_argument('--keep', type=int, default=0, help='also keep the last K checkpoints as ckpt_XXXXXXX.pt (0: only ckpt.pt)')
parser.add_argument('--resume', nargs='?', const='auto', help='checkpoint to resume (no value: out_dir/ckpt.pt); '
                    'flags left out take the checkpoint\'s values')
parser.add_argument('--eval_data', help='image folder scored at the end (L2/PSNR per prefix)')
parser.add_argument('--eval_prefix_images', type=int, default=10_000,
                    help='about this many --eval_data images, spread evenly, are scored at every prefix; all at the full prefix')
parser.add_argument('--eval_only', action='store_true', help='only score --resume on --eval_data')
parser.add_argument('--eval_npz', help='also write the full-N reconstructions of --eval_data here (uint8 NHWC arr_0: rFID with fid.py)')
args = parser.parse_args()
common.check_flags(args, positive=('batch_size', 'grad_accum', 'max_steps', 'steps_this_run', 'log_every', 'ckpt_every',
                                   'eval_prefix_images', 'image_size', 'patch_size', 'n_tokens', 'codebook_size', 'code_dim',
                                   'lpips_resize', 'disc_resize'),
                   non_negative=('warmup', 'disc_start', 'restart_every', 'sample_every', 'workers', 'ckpt_minutes', 'keep'))
# where and how to run, not what to train: never taken from a resumed checkpoint
MACHINE_FLAGS = ('data', 'out_dir', 'device', 'workers', 'compile', 'bf16', 'lpips_path', 'eval_data', 'eval_only', 'eval_npz',
                 'steps_this_run')
# what shapes the model, its losses or the data stream: a resumed run must not contradict the checkpoint. Not
# --grad_accum: a run may continue on another number of processes with the same global --batch_size.
RUN_FLAGS = ('preset', 'image_size', 'patch_size', 'n_tokens', 'codebook_size', 'code_dim', 'commitment', 'ablation',
             'schedule', 'batch_size', 'seed', 'full_prefix_prob', 'lpips_resize', 'disc_cond', 'disc_resize', 'gan_full_only')
# the tokenizer's shape, which stage 2 takes from its stage-1 checkpoint
ARCHITECTURE_FLAGS = ('preset', 'image_size', 'patch_size', 'n_tokens', 'codebook_size', 'code_dim', 'commitment',
                      'ablation', 'schedule')
# the flags a frozen encoder side fixes (stage 2, and decoder fine-tuning: stage 0 with --init_from): no code restarts
FROZEN_ENCODER_SETTINGS = {'restart_every': 0}
# the flags each stage of TiTok's recipe fixes: stage 1 learns the proxy codes by cross-entropy alone (no pixel losses)
STAGE_SETTINGS = {1: {'l2_weight': 0.0, 'lpips_weight': 0.0, 'gan_weight': 0.0}, 2: FROZEN_ENCODER_SETTINGS}


def run_settings_of(ckpt, config):
    """The flags a checkpoint was trained with; those that shape the tokenizer (ARCHITECTURE_FLAGS but the preset's
    name, and the stage) read from its config."""
    return {**ckpt['args'], **{name: getattr(config, name) for name in ARCHITECTURE_FLAGS if name != 'preset'},
            'stage': config.stage}


def check_resumed_stage(saved_stage, path):
    """A resumed run continues the checkpoint's stage; stage 2 starts anew from a stage-1 checkpoint (--init_from)."""
    if 'stage' in common.flags_given(parser) and args.stage != saved_stage:
        fix = (f"to start stage 2 from it, run --stage 2 --init_from {path} with another --out_dir"
               if (saved_stage, args.stage) == (1, 2) else "leave --stage out to continue it, or start a new run in another --out_dir")
        raise common.UserError(f"--stage {args.stage} contradicts the checkpoint, which was trained at --stage {saved_stage}: {fix}")


def check_stage_flags():
    """Stop with the fix where the flags do not fit --stage; set the flags the stage fixes (STAGE_SETTINGS)."""
    given = common.flags_given(parser)
    if args.stage == 1 and not args.proxy_vqgan:
        raise common.UserError(f"--stage 1 needs --proxy_vqgan PATH, the VQGAN whose codes the decoder learns. {WEIGHTS_SOURCE}")
    if args.stage == 2 and not (args.init_from or args.resume):
        raise common.UserError("--stage 2 needs --init_from PATH, the stage-1 checkpoint it fine-tunes (train_tok.py --stage 1)")
    if 'proxy_vqgan' in given and args.stage != 1:
        raise common.UserError("--proxy_vqgan is for --stage 1 only (stage 2 takes the VQGAN decoder from the stage-1 "
                               "checkpoint): leave it out")
    if 'init_from' in given and args.stage == 1:
        raise common.UserError("--init_from is for --stage 2 (from a stage-1 checkpoint) and decoder fine-tuning (--stage 0, "
                               "from a trained tokenizer): stage 1 starts anew")
    fixed, run = ((FROZEN_ENCODER_SETTINGS, "decoder fine-tuning (--init_from)") if decoder_finetune()
                  else (STAGE_SETTINGS.get(args.stage, {}), f"--stage {args.stage}"))
    for name, value in fixed.items():
        if name in given and getattr(args, name) != value:
            raise common.UserError(f"{run} runs with --{name} {value}: leave --{name} out")
        setattr(args, name, value)


def decoder_finetune():
    """Whether this run fine-tunes a trained stage-0 tokenizer's decoder (--init_from at stage 0, or its resume)."""
    return args.stage == 0 and args.init_from is not None


def init_start():
    """The checkpoint --init_from and the config of the run's tokenizer: stage 2's from a stage-1 checkpoint, decoder
    fine-tuning's (stage 0) the checkpoint's own, as it keeps the encoder; architecture flags given must agree."""
    try:
        init = common.load_checkpoint(args.init_from, 'tokenizer')
        config = config_of_checkpoint(init, args.init_from)
    except (FileNotFoundError, ValueError) as e:
        raise common.UserError(f"--init_from: {e}")
    wanted = 1 if args.stage == 2 else 0
    if config.stage != wanted:
        purpose = ("stage 2 starts from a checkpoint of train_tok.py --stage 1" if args.stage == 2 else
                   "decoder fine-tuning (--stage 0) starts from a stage-0 tokenizer"
                   + ("; for TiTok's stage 2, pass --stage 2" if config.stage == 1 else ""))
        raise common.UserError(f"--init_from {args.init_from!r} is a stage-{config.stage} checkpoint: {purpose}")
    saved = run_settings_of(init, config)
    given = common.flags_given(parser)
    for name in ARCHITECTURE_FLAGS:
        if name in given and getattr(args, name) != saved[name]:
            raise common.UserError(f"--{name} {getattr(args, name)} contradicts the --init_from checkpoint (--{name} "
                                   f"{saved[name]}): the run keeps its tokenizer's shape; leave --{name} out")
        setattr(args, name, saved[name])
    return init, dataclasses.replace(config, stage=args.stage)


def codes_from_of(init):
    """Decoder fine-tuning keeps the codes of --init_from: the sha256 of every file with those codes (the checkpoint,
    the one it was exported from, those it fine-tuned), which sample.py accepts for a generator's tokenizer."""
    exported_from = init.get('exported_from')
    return [common.file_sha256(args.init_from), *([exported_from['sha256']] if exported_from else []),
            *init.get('codes_from', [])]


def load_proxy_vqgan():
    try:
        return load_vqgan(args.proxy_vqgan).to(device)
    except (OSError, ValueError) as e:
        raise common.UserError(f"--proxy_vqgan: {e}")


def start_weights(model, proxy_vqgan, init):
    """A new run's first weights where they are not random: stage 1 copies the VQGAN's codebook and decoder into the
    tokenizer (frozen there, they decode its predicted codes); stage 2 and decoder fine-tuning start from --init_from's
    EMA weights (a weights-only export holds them as its model)."""
    if config.stage == 1:
        model.pixel_quantize.load_state_dict(proxy_vqgan.quantize.state_dict())
        model.pixel_decoder.load_state_dict(proxy_vqgan.decoder.state_dict())
    elif init is not None:
        model.load_state_dict(common.ema_or_model(init))
    return model


def preset_for_images(root):
    """The tokenizer preset made for the size of root's images (--preset left out): cifar when they are 32 px,
    titok_b64 when their short side is 256 px or more (center-cropped down as ADM does); otherwise a stop that
    lists the presets."""
    try:
        paths = list_images(root)[0]
    except FileNotFoundError as e:
        raise common.UserError(f"--data: {e}")
    sizes = set()
    for path in paths[::max(1, len(paths) // 16)]:  # 16 images spread over the folder
        with contextlib.suppress(*UNREADABLE_IMAGE_ERRORS), Image.open(path) as img:
            sizes.add(min(img.size))
    if sizes == {32}:
        return 'cifar'
    if sizes and min(sizes) >= 256:
        return 'titok_b64'
    found = f"short sides of {min(sizes)} to {max(sizes)} px" if sizes else "no readable image"
    raise common.UserError(f"--preset: the images of {root!r} ({found}) fit no preset by size: pass --preset cifar (32 px), "
                     f"titok_b64 (256 px) or tiny (32 px, the CPU smoke test); images are center-cropped and resized "
                     f"to the preset's size")


# ----------------------------------------------------------------------------- setup
run_start = time.time()
dist_state = common.setup_distributed(args.device)
device = dist_state.device
ckpt_path = os.path.join(args.out_dir, 'ckpt.pt')
log_path = os.path.join(args.out_dir, 'log.jsonl')

resume = None
if args.resume:
    resume = common.load_resume_checkpoint(args, ckpt_path, 'tokenizer', weights_only_ok=args.eval_only)
    resume_path = ckpt_path if args.resume == 'auto' else args.resume
    try:
        config = config_of_checkpoint(resume, resume_path)
    except ValueError as e:
        raise common.UserError(f"--resume: {e}")
    check_resumed_stage(config.stage, resume_path)
    changed = common.apply_resume_args(parser, args, run_settings_of(resume, config), fixed=RUN_FLAGS, keep=MACHINE_FLAGS)
    if dist_state.master:
        print(common.resume_message(resume['step'], changed, args.max_steps, training=not args.eval_only))
        if 'max_steps' in changed and not args.eval_only:
            # the cosine is a function of --max_steps: a new end moves the learning rate at every step still to come
            print(f"--max_steps {resume['args']['max_steps']} -> {args.max_steps}: the learning rate's cosine now ends at "
                  f"step {args.max_steps}; from step {resume['step']} on the run follows that curve (after a decay, a jump "
                  f"back up), not that of a run started with --max_steps {args.max_steps}. To train one run in pieces, "
                  f"start it with its final --max_steps and pass --steps_this_run")
else:
    if args.preset is None and args.init_from is None:
        args.preset = preset_for_images(args.data)
        if dist_state.master:
            print(f"no --preset given: {args.preset}, the preset for {TokConfig.preset(args.preset).image_size} px images")
    if args.warmup is None:
        args.warmup = min(DEFAULT_WARMUP, args.max_steps // 10)
        if args.warmup < DEFAULT_WARMUP and dist_state.master:
            print(f"warmup over {args.warmup} steps, a tenth of --max_steps {args.max_steps} (--warmup sets it)")
    common.check_warmup(args.warmup, args.max_steps)
    if args.gan_weight > 0 and args.disc_start >= args.max_steps and dist_state.master:
        print(f"--disc_start {args.disc_start} is not before --max_steps {args.max_steps}: this run trains without the GAN loss")
check_stage_flags()
proxy_vqgan = load_proxy_vqgan() if args.stage == 1 else None
init = None
codes_from = resume.get('codes_from', []) if resume else []
if not resume and args.init_from:
    init, config = init_start()
    codes_from = codes_from_of(init) if decoder_finetune() else []
elif not resume:
    config = TokConfig.preset(args.preset, args.ablation, image_size=args.image_size, patch_size=args.patch_size,
                              n_tokens=args.n_tokens, codebook_size=args.codebook_size, code_dim=args.code_dim,
                              commitment=args.commitment, schedule=args.schedule, stage=args.stage,
                              proxy_vqgan=dataclasses.asdict(proxy_vqgan.config) if proxy_vqgan else None)
    if config.image_size % config.patch_size:
        raise common.UserError(f"--image_size {config.image_size} is not a multiple of the patch size {config.patch_size}: "
                               f"pass --patch_size with a divisor of it")
if args.gan_weight > 0 and max(config.image_size, args.disc_resize or 0) < DISCRIMINATOR_MIN_SIZE:
    raise common.UserError(f"--gan_weight {args.gan_weight}: the PatchGAN discriminator needs images of "
                           f"{DISCRIMINATOR_MIN_SIZE} px or more, these are {config.image_size} px: pass --gan_weight 0, "
                           f"or --disc_resize {DISCRIMINATOR_MIN_SIZE} to upsample them for it")
micro_batch = common.micro_batch_size(args.batch_size, dist_state.world_size, args.grad_accum)  # with the run's settings
args.workers, cores_used = common.use_cpu_cores(device, args.workers)
use_bf16 = common.bf16_autocast_on(args.bf16, device)
autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)
torch.manual_seed(args.seed)
try:
    model = Tokenizer(config).to(device)
except ValueError as e:  # a VQGAN whose code grid is not the tokenizer's patch grid
    raise common.UserError(f"--stage {config.stage}: {e}")
if not resume:
    model = start_weights(model, proxy_vqgan, init)
del init  # --init_from's checkpoint: its weights are the model's now
if decoder_finetune():
    model.freeze(ENCODER_SIDE)
ema_model = copy.deepcopy(model).eval().requires_grad_(False)
optimizer = common.adamw(model, args.lr, (0.9, 0.999), args.weight_decay, model.no_weight_decay())
use_gan = args.gan_weight > 0
discriminator = NLayerDiscriminator(n_conditions=config.image_size + 1 if args.disc_cond else 0,
                                    resize=args.disc_resize).to(device) if use_gan else None
discriminator_optimizer = common.adamw(discriminator, args.lr, (0.9, 0.999), args.weight_decay) if use_gan else None
lecam = LeCamRegularizer().to(device) if use_gan else None
lpips = LPIPS(args.lpips_path, resize=args.lpips_resize).to(device) if args.lpips_weight > 0 else None

step = 0
if resume:
    model.load_state_dict(resume['model'])
    # a weights-only export, which only --eval_only takes, holds the EMA weights as its model and nothing to train on
    ema_model.load_state_dict(common.ema_or_model(resume))
    if not resume.get('weights_only'):
        optimizer.load_state_dict(resume['optimizer'])
        if use_gan and resume['disc'] is None:
            if dist_state.master:
                print("the checkpoint has no discriminator (trained with --gan_weight 0): the GAN starts with a new one")
        elif use_gan:
            discriminator.load_state_dict(resume['disc'])
            discriminator_optimizer.load_state_dict(resume['disc_optimizer'])
            lecam.load_state_dict(resume['lecam'])
        common.set_rng_state(resume['rng'])
    step = resume['step']
    del resume

if dist_state.master:
    common.check_writable(args.out_dir, '--out_dir')
    if args.eval_npz:
        common.check_writable_file(args.eval_npz, '--eval_npz')
    print(f"tokenizer {config}\n{model.num_params() / 1e6:.1f}M params, {dist_state.world_size} process(es) on {device}, "
          f"global batch {args.batch_size} = {dist_state.world_size} x {args.grad_accum} x {micro_batch} (processes x --grad_accum x micro-batch), "
          f"bf16 {use_bf16}" + (f", LPIPS weights: {lpips.weights_source}" if lpips else ", no LPIPS") + f"; {cores_used}")
# compile first, then DDP (as nanoGPT). The losses too: at 256 px, LPIPS's float32 distance maps and the
# discriminator's GroupNorms are most of a step's non-matmul time, and compiling fuses them.
compiled = torch.compile if args.compile else (lambda module: module)
train_model = compiled(model)
# The generator loss calls the discriminator frozen, without DDP (discriminator_compiled); the discriminator step
# trains it through discriminator_ddp: its DDP wrapper with several processes, the compiled module with one.
discriminator_compiled = compiled(discriminator) if use_gan else None
discriminator_ddp = discriminator_compiled
lpips_loss = compiled(lpips) if lpips is not None else None
if dist_state.world_size > 1:
    device_ids = [dist_state.local_rank] if device.type == 'cuda' else None
    # The code-usage counts are per rank (summed at restarts and checkpoints): DDP must not copy rank 0's over them
    # before every forward (the other buffers are constants). torch 2.13 names that flag forward_sync_buffers and
    # deprecates broadcast_buffers; forward_sync_buffers=False still copies rank 0's buffers once, here.
    no_buffer_sync = {'forward_sync_buffers' if 'forward_sync_buffers' in inspect.signature(DDP).parameters
                      else 'broadcast_buffers': False}
    train_model = DDP(train_model, device_ids=device_ids, **no_buffer_sync)
    discriminator_ddp = DDP(discriminator_compiled, device_ids=device_ids) if use_gan else None
    if not dist_state.master:
        model.quantizer.usage.zero_()  # a resumed checkpoint holds the sum over ranks, now on every rank: count it once


def lr_at(step):
    """Linear warmup, then cosine decay to min_lr."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.max_steps - args.warmup)
    return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def step_randomness(step):
    """Prefix lengths and flips of the global batch from (seed, step): the same on any number of processes and after resume."""
    g = common.step_generator(args.seed, step)
    prefix = sample_prefix_lengths(config.n_tokens, args.batch_size, g, args.full_prefix_prob)
    flip = torch.rand(args.batch_size, generator=g) < 0.5
    n = args.batch_size // dist_state.world_size
    local = slice(dist_state.rank * n, (dist_state.rank + 1) * n)
    return prefix[local].to(device, non_blocking=True), flip[local].to(device, non_blocking=True)  # no host sync


def views(images, flip):
    """uint8 images -> floats on the device, the flipped ones mirrored."""
    x = to_float(images, device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def tokenizer_loss(output, vq_loss, target, gan_on=False, disc_condition=None, gan_mask=None):
    """The tokenizer's loss on one micro-batch and its terms for the log. Stage 1: the cross-entropy of the proxy-code
    logits with the VQGAN's codes of the targets, + VQ. Otherwise L2 + VQ + LPIPS (+ GAN once on) on pixels; in stage 2
    the VQ term has no gradient (the encoder is frozen) and only shows in the log."""
    if config.stage == 1:
        ce = proxy_code_loss(output, proxy_vqgan, target)
        return ce + vq_loss, {'proxy_ce': ce.detach(), 'vq': vq_loss.detach()}
    l2 = F.mse_loss(output, target)
    loss = args.l2_weight * l2 + vq_loss
    terms = {'l2': l2.detach(), 'vq': vq_loss.detach()}
    if lpips is not None:
        terms['lpips'] = lpips_loss(output, target).mean()
        loss = loss + args.lpips_weight * terms['lpips']
    if gan_on:
        discriminator.requires_grad_(False)  # the generator loss must not touch the discriminator's gradients
        terms['gan_g'] = hinge_g_loss(discriminator_compiled(output, disc_condition), gan_mask)
        loss = loss + args.gan_weight * terms['gan_g']
        discriminator.requires_grad_(True)
    return loss, terms


@torch.no_grad()
def restart_dead_codes(step, candidates):
    """Codes unused since the last restart get random encoder outputs: candidates, this step's encoder outputs of
    every micro-batch, gathered from all ranks in the order of the global batch (identical on each rank)."""
    q = model.quantizer
    usage = q.usage.clone()
    if dist_state.world_size > 1:
        torch.distributed.all_reduce(usage)
        gathered = [torch.empty_like(candidates) for _ in range(dist_state.world_size)]
        torch.distributed.all_gather(gathered, candidates)
        candidates = torch.cat(gathered)
    stats = codebook_stats(usage)
    stats['codes_restarted'] = q.restart_dead_codes(usage, candidates, torch.Generator(device).manual_seed(args.seed + step),
                                                    ema=ema_model.quantizer)
    return stats


def perplexity(usage):
    """exp(entropy) of the code counts along the last dimension: the number of equally used codes they amount to."""
    p = usage / usage.sum(-1, keepdim=True).clamp(min=1)
    return (-(p * p.clamp(min=1e-12).log()).sum(-1)).exp()


def codebook_stats(usage):
    return {'codebook_used': (usage > 0).float().mean().item(), 'codebook_perplexity': perplexity(usage).item()}


@torch.no_grad()
def ema_codebook_stats(images, flip):
    """Code usage of the EMA model (the one that encodes and is scored) on this step's batch of all ranks. A batch holds
    B x N codes (8,192 in the cifar recipe, 8 per code of K = 1024): the perplexity reads low by about K / (2 B N) nats."""
    micro_batches = zip(images.tensor_split(args.grad_accum), flip.tensor_split(args.grad_accum))
    codes = [ema_model.encode(views(*micro)) for micro in micro_batches]
    usage = torch.bincount(torch.cat(codes).flatten(), minlength=config.codebook_size).float()
    if dist_state.world_size > 1:
        torch.distributed.all_reduce(usage)
    return {f'ema_{k}': v for k, v in codebook_stats(usage).items()}


@torch.no_grad()
def evaluate(tok, root):
    """L2 and PSNR (images in [0, 1]) of the prefixes against their low-pass targets and against the full image, and
    the code usage of tok, over all tokens and at each position (a position of perplexity near 1 carries almost
    nothing, and is cheap for the generator for that reason alone); the record leads with the figures that compare
    runs (with rFID from fid.py on --eval_npz).
    The full prefix N is scored on every image, the shorter ones on every k-th image (about --eval_prefix_images).
    Each process scores a contiguous share of the folder and the sums are reduced; the reconstructions are gathered
    on rank 0 in folder order. The codes come from a float32 encoder, as in the token files (bf16 changes some codes);
    the decoder runs under --bf16, as in sampling."""
    eval_start = time.time()
    dataset = ImageFolder(root, config.image_size)
    stride = max(1, len(dataset) // args.eval_prefix_images)
    share = np.array_split(np.arange(len(dataset)), dist_state.world_size)[dist_state.rank]
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(IndexedImages(dataset), share), batch_size=100,
                                         num_workers=args.workers, collate_fn=collate_indexed)
    # per prefix: summed squared errors against the low-pass target and against the image; then the images scored
    # at the prefixes < N and at N
    errors = torch.zeros(2, config.n_tokens, dtype=torch.float64, device=device)
    counts = torch.zeros(2, dtype=torch.float64, device=device)
    usage = torch.zeros(config.n_tokens, config.codebook_size, device=device)  # code counts at each position
    recons = []

    def add_errors(recon, x, i):
        to_target = ((recon.float() - lowpass(x, tok.omegas[i - 1]).clamp(-1, 1)) / 2).pow(2).mean((1, 2, 3)).sum()
        to_image = ((recon.float() - x) / 2).pow(2).mean((1, 2, 3)).sum()
        errors[:, i - 1] += torch.stack([to_target, to_image])

    def add_prefix_errors(pending):  # the prefixes < N of the images gathered in pending, decoded together
        x, idx = (torch.cat(parts) for parts in zip(*pending))
        for i in range(1, config.n_tokens):
            with autocast:
                add_errors(tok.decode(idx[:, :i]), x, i)
        counts[0] += len(x)
        pending.clear()

    # with a stride, each batch holds a few prefix images: they are gathered to a full batch before their N - 1
    # decodes, which would otherwise run on a few images at a time (31 decodes per batch of 100 on CIFAR-10 train)
    pending = []
    for images, _, indices, _ in common.progress_bar(loader, desc='eval', unit='batch', disable=not dist_state.master):
        x = to_float(images, device)
        idx = tok.encode(x)
        usage.scatter_add_(1, idx.T, torch.ones_like(idx.T, dtype=usage.dtype))
        with autocast:
            recon = tok.decode(idx)
        add_errors(recon, x, config.n_tokens)
        every_prefix = [j for j, i in enumerate(indices) if i % stride == 0]
        if every_prefix:
            pending.append((x[every_prefix], idx[every_prefix]))
        if sum(len(part) for part, _ in pending) >= loader.batch_size:
            add_prefix_errors(pending)
        counts[1] += len(x)
        if args.eval_npz:
            recons.append(to_uint8(recon))
    if pending:
        add_prefix_errors(pending)
    if dist_state.world_size > 1:
        for total in (errors, counts, usage):
            torch.distributed.all_reduce(total)
    if args.eval_npz:
        mine = np.concatenate(recons) if recons else np.zeros((0, config.image_size, config.image_size, 3), np.uint8)
        shares = [None] * dist_state.world_size if dist_state.master else None
        if dist_state.world_size > 1:
            torch.distributed.gather_object(mine, shares, dst=0)
        else:
            shares = [mine]
        if dist_state.master:
            common.atomic_write(args.eval_npz, lambda f: np.savez(f, arr_0=np.concatenate(shares)))
    if not dist_state.master:
        return None
    seen, prefix_images = int(counts[1]), int(counts[0])
    scored = torch.cat([counts[0].expand(config.n_tokens - 1), counts[1:]])
    mse_target, mse_full = (errors[0] / scored).tolist(), (errors[1] / scored).tolist()
    position_perplexity = perplexity(usage).tolist()
    table = [{'prefix': i + 1, 'omega': int(tok.omegas[i]), 'l2_vs_lowpass': mse_target[i],
              'psnr_vs_lowpass': -10 * math.log10(mse_target[i]), 'l2_vs_image': mse_full[i],
              'psnr_vs_image': -10 * math.log10(mse_full[i]), 'code_perplexity': position_perplexity[i]}
             for i in range(config.n_tokens)]
    print(f"{'prefix':>6} {'w_i':>4} {'PSNR(lowpass)':>13} {'PSNR(image)':>11} {'perplexity of token i':>21}   "
          f"({seen} images of {root}, {prefix_images} of them at the prefixes < {config.n_tokens})")
    for r in table:
        print(f"{r['prefix']:>6} {r['omega']:>4} {r['psnr_vs_lowpass']:>13.2f} {r['psnr_vs_image']:>11.2f} "
              f"{r['code_perplexity']:>21.1f}")
    summary = {'psnr_vs_image_at_N': table[-1]['psnr_vs_image'],
               'psnr_vs_lowpass_at': {i: table[i - 1]['psnr_vs_lowpass'] for i in (1, 2, 4, 8) if i <= config.n_tokens},
               **codebook_stats(usage.sum(0)), 'run_wall_s': time.time() - run_start, 'eval_wall_s': time.time() - eval_start}
    print(f"PSNR at N vs image {summary['psnr_vs_image_at_N']:.2f} dB, prefixes "
          + ', '.join(f"{i}: {v:.2f}" for i, v in summary['psnr_vs_lowpass_at'].items())
          + f" dB vs low-pass; codebook used {summary['codebook_used']:.1%}, perplexity "
          f"{summary['codebook_perplexity']:.0f}; {summary['run_wall_s'] / 60:.1f} min since start")
    common.log_jsonl(os.path.join(args.out_dir, 'eval.jsonl'),
                     {'step': step, 'data': root, 'images': seen, 'prefix_images': prefix_images, **summary, 'prefixes': table})
    return table


@torch.no_grad()
def loss_of_current_weights(x, prefix, target):
    """The loss of the weights about to be saved, on the last micro-batch (common.check_checkpoint_finite says why)."""
    model.eval()  # eval: the code usage counts stay as training left them
    with autocast:
        output, vq_loss, _ = model(x, prefix)
        loss, _ = tokenizer_loss(output.float(), vq_loss, target)
    model.train()
    return loss


def save_checkpoint():
    """Called on every rank: the code usage counts are per rank, so the checkpoint stores their sum."""
    usage = model.quantizer.usage.clone()
    if dist_state.world_size > 1:
        torch.distributed.all_reduce(usage)
    if not dist_state.master:
        return
    common.save_and_keep({
        'kind': 'tokenizer', 'config': dataclasses.asdict(config), 'args': vars(args), 'step': step,
        'model': {**model.state_dict(), 'quantizer.usage': usage}, 'ema': {**ema_model.state_dict(), 'quantizer.usage': usage}, 'optimizer': optimizer.state_dict(),
        'disc': discriminator.state_dict() if use_gan else None,
        'disc_optimizer': discriminator_optimizer.state_dict() if use_gan else None,
        'lecam': lecam.state_dict() if use_gan else None, 'rng': common.rng_state(), 'codes_from': codes_from,
    }, ckpt_path, step, args.keep)


# ----------------------------------------------------------------------------- training
if args.eval_only:
    if not (args.resume and args.eval_data):
        raise common.UserError('--eval_only needs --resume CKPT and --eval_data FOLDER')
    evaluate(ema_model, args.eval_data)
    del train_model, discriminator_ddp  # their DDP wrappers hold the process group (common.cleanup_distributed)
    common.cleanup_distributed()
    raise SystemExit(0)

dataset, loader = image_loader(args.data, config.image_size, args.batch_size, dist_state.rank, dist_state.world_size,
                               args.seed, step, args.workers)
preview = to_float(torch.stack([image for image, _ in readable_samples(dataset, 8)]), device)
preview_prefix_lens = [2 ** k for k in range(int(math.log2(config.n_tokens)) + 1)]  # 1, 2, 4, ... and N
preview_prefix_lens += [config.n_tokens] if preview_prefix_lens[-1] != config.n_tokens else []
# forward + backward, tokenizer matmuls only (not LPIPS, GAN); a frozen encoder (stage 2, decoder fine-tuning) runs
# forward only
encoder_flops = flops_per_image(config, decoder_passes=0)
flops_per_sample = 3 * flops_per_image(config) - (2 * encoder_flops if config.stage == 2 or decoder_finetune() else 0)
finite = torch.ones((), dtype=torch.bool, device=device)
sums, record = {}, None
n_bad, n_empty_batches = 0, 0
t_last, step_last = time.time(), step
pbar = common.progress_bar(total=args.max_steps, initial=step, disable=not dist_state.master)
data_iter = iter(loader)
stop_step = args.max_steps if args.steps_this_run is None else min(args.max_steps, step + args.steps_this_run)
checkpoints = common.CheckpointSchedule(args.ckpt_every, stop_step, args.ckpt_minutes, device)
while step < stop_step:
    images, _, bad = next(data_iter)  # this process's share of the global batch, split into grad_accum micro-batches
    n_bad += bad
    if not len(images):  # no readable image in this process's batch: draw the next one (counted, logged)
        n_empty_batches += 1
        continue
    prefix, flip = step_randomness(step)
    prefix, flip = prefix[:len(images)], flip[:len(images)]  # a batch with skipped bad files is shorter
    gan_on = use_gan and step >= args.disc_start
    for group in optimizer.param_groups + (discriminator_optimizer.param_groups if use_gan else []):
        group['lr'] = lr_at(step)

    # tokenizer step; every micro-step's loss is divided by grad_accum: the gradient is the mean over the process's share
    optimizer.zero_grad(set_to_none=True)
    terms, encoder_outputs, disc_batches = {}, [], []
    micro_batches = zip(images.tensor_split(args.grad_accum), prefix.tensor_split(args.grad_accum), flip.tensor_split(args.grad_accum))
    for micro_step, (micro_images, micro_prefix, micro_flip) in enumerate(micro_batches):
        if not len(micro_images):  # skipped bad files left fewer images than micro-steps
            continue
        common.seed_model_randomness(args.seed, step, dist_state.rank * args.grad_accum + micro_step)
        x = views(micro_images, micro_flip)
        target, micro_prefix = model.prefix_targets(x, micro_prefix)
        last_micro_batch = x, micro_prefix, target  # for the finite-weights check before a checkpoint
        gan_mask = micro_prefix == config.n_tokens if args.gan_full_only else None  # the samples whose target is the full image
        disc_condition = model.omegas[micro_prefix - 1] if args.disc_cond else None
        with common.gradient_sync(train_model, micro_step, args.grad_accum):
            with autocast:
                output, vq_loss, _ = train_model(x, micro_prefix)
                output = output.float()
                loss, micro_terms = tokenizer_loss(output, vq_loss, target, gan_on, disc_condition, gan_mask)
            (loss / args.grad_accum).backward()
        finite &= torch.isfinite(loss.detach())
        for k, v in micro_terms.items():
            terms[k] = terms.get(k, 0) + v.detach().float() / args.grad_accum
        encoder_outputs.append(model.quantizer.last_z)
        if gan_on:
            disc_batches.append((target, output.detach(), disc_condition, gan_mask))
    terms['grad_norm'] = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
    optimizer.step()
    common.ema_update(ema_model, model, common.ema_decay(args.ema, step))

    # discriminator step: real = the same low-pass targets the tokenizer is asked for (with the same w_i)
    if gan_on:
        discriminator_optimizer.zero_grad(set_to_none=True)
        for micro_step, (target, recon, disc_condition, gan_mask) in enumerate(disc_batches):
            with common.gradient_sync(discriminator_ddp, micro_step, args.grad_accum):
                with autocast:
                    logits = discriminator_ddp(torch.cat([target, recon]),
                                               None if disc_condition is None else disc_condition.repeat(2)).float()
                    real, fake = logits.chunk(2)
                    gan_d = hinge_d_loss(real, fake, gan_mask)
                    d_loss = gan_d + args.lecam_weight * lecam(real, fake, gan_mask, update=False)
                (d_loss / args.grad_accum).backward()
            terms['gan_d'] = terms.get('gan_d', 0) + gan_d.detach().float() / args.grad_accum
            # the share of images D puts on their side of 0 before its step (0.5: it tells real from
            # reconstructed no better than chance), which gan_d near 1.0 leaves open
            accuracy = 0.5 * (masked_mean((real > 0).float(), gan_mask) + masked_mean((fake < 0).float(), gan_mask))
            terms['disc_accuracy'] = terms.get('disc_accuracy', 0) + accuracy.detach() / args.grad_accum
        lecam.update()
        torch.nn.utils.clip_grad_norm_(discriminator.parameters(), args.grad_clip)
        discriminator_optimizer.step()

    for k, v in terms.items():
        sums[k] = sums.get(k, 0) + v.detach().float()
    step += 1
    pbar.update(1)

    codebook = None
    if args.restart_every and step % args.restart_every == 0:
        codebook = restart_dead_codes(step, torch.cat(encoder_outputs).flatten(0, 1))
    log_step = step % args.log_every == 0 or step == stop_step
    if log_step:
        if not common.all_finite(finite):
            common.stop_on_nonfinite(step, ckpt_path)
        n = step - step_last
        means = torch.stack(list(sums.values())) / n
        if dist_state.world_size > 1:  # the terms of the global batch, as one process with --grad_accum logs them
            torch.distributed.all_reduce(means)
            means /= dist_state.world_size
        record = {'step': step, 'lr': lr_at(step - 1), **dict(zip(sums, means.tolist())),
                  **common.speed_record(n, time.time() - t_last, args.batch_size, flops_per_sample, dist_state),
                  'bad_images_skipped': n_bad, 'empty_batches_skipped': n_empty_batches,
                  **(codebook or codebook_stats(model.quantizer.usage)), **ema_codebook_stats(images, flip)}
        if dist_state.master:
            common.log_jsonl(log_path, record)
            pbar.set_postfix({k: f"{record[k]:.4g}" for k in ('l2', 'proxy_ce', 'lpips', 'vq', 'codebook_used') if k in record})
        sums, t_last, step_last = {}, time.time(), step
    if dist_state.master and args.sample_every and (step % args.sample_every == 0 or step == args.max_steps):
        save_coarse_to_fine(ema_model, ema_model.encode(preview), os.path.join(args.out_dir, f'prefixes_{step:07d}.png'),
                            preview_prefix_lens, images=preview)
    if checkpoints.due(step, log_step):
        states = [model.state_dict(), ema_model.state_dict(), optimizer.state_dict()]
        states += [discriminator.state_dict(), discriminator_optimizer.state_dict()] if use_gan else []
        common.check_checkpoint_finite(step, ckpt_path, finite, loss_of_current_weights(*last_micro_batch), *states)
        save_checkpoint()
pbar.close()
if n_bad and dist_state.master:
    print(f"skipped {n_bad} unreadable image(s)" + (f", {n_empty_batches} batch(es) without any readable one" if n_empty_batches else ""))
finished = step >= args.max_steps
if args.eval_data and finished:
    evaluate(ema_model, args.eval_data)
if dist_state.master:
    prefixes = os.path.join(args.out_dir, f'prefixes_{step:07d}.png')
    print(f"wrote {ckpt_path} (step {step})" + (f" and {prefixes}" if os.path.exists(prefixes) else "")
          + f" in {common.format_duration(time.time() - run_start)}"
          + (f"; last logged {'L2' if 'l2' in record else 'proxy-code cross-entropy'} "
             f"{record.get('l2', record.get('proxy_ce')):.4f}, codebook used {record['codebook_used']:.0%}" if record else ""))
    if not finished:
        print(f"stopped at step {step} of --max_steps {args.max_steps} (--steps_this_run {args.steps_this_run}): continue "
              f"with --resume" + (", which scores --eval_data once the run reaches --max_steps" if args.eval_data else ""))
del train_model, discriminator_ddp  # their DDP wrappers hold the process group (common.cleanup_distributed)
common.cleanup_distributed()
