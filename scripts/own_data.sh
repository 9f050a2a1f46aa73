#!/usr/bin/env bash
# Your own image folder end to end at CIFAR-like sizes (images center-cropped and resized to 32 px), on one GPU:
# held-out split -> tokenizer -> token files -> generator -> samples -> FID against the training images.
#   DATA=path/to/images bash scripts/own_data.sh [stage ...]    stages: split tok gen sample fid (default: all)
# DATA holds <class>/<image> files (class ids follow the sorted folder names) or only images (one class).
# split   holds out 1 image in 10 of each class (at most 10,000 in all) as symbolic links under $OUT/data/test/,
#         the rest under $OUT/data/train/: the tokenizer is scored and the generator's validation NLL and best.pt
#         are measured on images it never trained on
# tok gen sample fid  scripts/cifar10.sh's stages (the recipe of docs/results.md) on $OUT/data, with the batches
#         fitted to the training images (256 and 512, or the largest power of two not above their count) and
#         SAMPLES images sampled (default 10,000, spread over the classes)
# Every setting of scripts/cifar10.sh can be given in the environment too (TOK_STEPS, GEN_STEPS, WORKERS...). The
# default budget (10,000 tokenizer and 6,000 generator steps of cifar_d8, the generator measured at that length; not
# cifar10.sh's cifar_d12, which overfits sooner) is about 20 minutes on one H100 and suits a few hundred to about
# 100,000 images; for more, raise TOK_STEPS and GEN_STEPS with the epochs you want. (cifar10.sh's
# own tokenizer length, 20,000 steps, was chosen on CIFAR-10's 45,000 training images and costs 12 more minutes.)
set -euo pipefail
: "${DATA:?set DATA=<image folder>, e.g. DATA=path/to/images bash scripts/own_data.sh}"
OUT=${OUT:-out/own/$(basename "$DATA")}
SAMPLES=${SAMPLES:-10000}
stages=("$@"); [ ${#stages[@]} -eq 0 ] && stages=(split tok gen sample fid)

make_split() {  # $OUT/data/{train,test}/<class>/ as links to DATA's images; kept when it exists
  [ -d "$OUT/data" ] && return
  python - "$DATA" "$OUT/data" <<'EOF'
import os, sys
from data import list_images
data, out = sys.argv[1:]
paths, labels, classes = list_images(data)
classes = classes or ['images']  # a folder of images alone: one class
per_class = [[p for p, label in zip(paths, labels) if label == c] for c in range(len(classes))]
held_out = max(1, 10_000 // len(classes))
for name, images in zip(classes, per_class):
    if len(images) < 2:
        sys.exit(f"class {name!r} has {len(images)} image(s): each class needs 2 or more (one is held out)")
    test = set(images[9::10][:held_out] or images[-1:])
    for split in ('train', 'test'):
        os.makedirs(os.path.join(out, split, name))
    for i, path in enumerate(images):
        link = os.path.join(out, 'test' if path in test else 'train', name, f'{i:06d}{os.path.splitext(path)[1]}')
        os.symlink(os.path.abspath(path), link)
print(f"split {len(paths)} images of {len(classes)} class(es) into {out}/train and {out}/test")
EOF
}

for stage in "${stages[@]}"; do
  [ "$stage" = split ] && { make_split; continue; }
  n_train=$(find -L "$OUT/data/train" -type f | wc -l)
  n_classes=$(ls "$OUT/data/train" | wc -l)
  fit=1; while [ $((fit * 2)) -le "$n_train" ]; do fit=$((fit * 2)); done  # the largest power of two <= n_train
  TOK_BATCH=${TOK_BATCH:-$((fit < 256 ? fit : 256))} GEN_BATCH=${GEN_BATCH:-$((fit < 512 ? fit : 512))} \
    PER_CLASS=${PER_CLASS:-$(((SAMPLES + n_classes - 1) / n_classes))} WORKERS=${WORKERS-} \
    TOK_STEPS=${TOK_STEPS:-10000} GEN_STEPS=${GEN_STEPS:-6000} GEN_CKPT=${GEN_CKPT:-$OUT/gen/best.pt} \
    GEN_PRESET=${GEN_PRESET:-cifar_d8} GEN_DROPOUT=${GEN_DROPOUT:-0.1} \
    DATA="$OUT/data" OUT="$OUT" bash "$(dirname "$0")/cifar10.sh" "$stage"
done
