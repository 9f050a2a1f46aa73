"""
Write the weights of a train_tok.py or train_gen.py checkpoint alone: the EMA weights (the model's where the run kept
no EMA) with the configuration, arguments and records that sample.py, sweep.py, superres.py and train_gen.py
--tok_ckpt read, without the optimizer, the discriminator and the training weights. For a tokenizer this is a quarter
of ckpt.pt (CIFAR-10's 21.5M parameters: 86 MB), small enough to publish or to carry to another machine, which
the full checkpoint often is not.

    python scripts/export_weights.py out/tok/ckpt.pt out/tok/weights.pt
    python scripts/export_weights.py out/gen/best.pt out/gen/weights.pt

The written file cannot be resumed (the trainers stop with the reason); train_tok.py --resume FILE --eval_only
scores it as it would the checkpoint. A generator trained on a tokenizer's
ckpt.pt samples with that tokenizer's exported file as well (sample.py --tok_ckpt): the export records the sha256
of the file it came from, which sample.py accepts in place of the file's own.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # noqa: E402  (the repository root)

# what only training reads: dropped from the export
TRAINING_STATE = ('optimizer', 'disc', 'disc_optimizer', 'lecam', 'rng')


def exported(ckpt, source_path):
    """The weights-only checkpoint of ckpt (read from source_path)."""
    kept = {key: value for key, value in ckpt.items() if key not in TRAINING_STATE + ('model', 'ema')}
    return {**kept, 'model': common.ema_or_model(ckpt), 'ema': None, 'weights_only': True,
            'exported_from': {'path': os.path.abspath(source_path), 'sha256': common.file_sha256(source_path)}}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=common.HelpFormatter)
    parser.add_argument('ckpt', help='a checkpoint written by train_tok.py or train_gen.py')
    parser.add_argument('out', help='the weights-only checkpoint to write')
    args = parser.parse_args(argv)
    if os.path.abspath(args.out) == os.path.abspath(args.ckpt):
        raise common.UserError(f"{args.out!r} is the checkpoint itself: write the weights to another path")
    try:
        ckpt = common.load_checkpoint(args.ckpt, None)
    except (FileNotFoundError, ValueError) as e:
        raise common.UserError(str(e))
    if ckpt.get('weights_only'):
        raise common.UserError(f"{args.ckpt!r} already holds weights only (exported from "
                               f"{ckpt['exported_from']['path']!r})")
    common.atomic_save(exported(ckpt, args.ckpt), args.out)
    print(f"wrote {args.out}: the {'EMA' if ckpt.get('ema') is not None else 'model'} weights of the {ckpt['kind']} "
          f"{args.ckpt} (step {ckpt['step']}), {os.path.getsize(args.out) / 2**20:.1f} MiB against "
          f"{os.path.getsize(args.ckpt) / 2**20:.1f} MiB")


if __name__ == '__main__':
    common.exit_on_user_error()
    main()
