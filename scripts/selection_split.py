"""
Carve a selection split out of a training folder, so that recipes are chosen without touching the test set:
SPLIT/val holds the last --val_per_class images of each class (by sorted path), SPLIT/train all the others, as
class folders of relative symbolic links into SOURCE. No image is copied; train_tok.py, train_gen.py and fid.py
read the two folders as any image folder.

    python scripts/selection_split.py ../shared/data/cifar10/train out/cifar10_select
    # out/cifar10_select/train/<class>/...  45,000 links: the first 4,500 images of each CIFAR-10 class
    # out/cifar10_select/val/<class>/...     5,000 links: the last 500 of each class

The search scripts (scripts/tok_search.sh, gen_search.sh, sweep_search.sh, through scripts/cifar10.sh with
SELECT=SPLIT) train on SPLIT/train and rank on SPLIT/val; CIFAR-10 test scores only the chosen recipe.
Run again on a built split, it checks that SPLIT is the split it would build and changes nothing; a SPLIT that
holds anything else (another SOURCE, another --val_per_class, images added since) stops with the fix. The split
is built under a temporary name and renamed into place, so a killed run leaves no half-built SPLIT.
"""
import argparse
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository's modules
import common  # noqa: E402
from data import class_names, find_images  # noqa: E402

PARTS = ('train', 'val')


def planned_split(source, val_per_class):
    """{'train': {link path within the part: image path}, 'val': {...}}: per class of source, its images in
    sorted order (as the trainers list them), the last val_per_class to val."""
    if not os.path.isdir(source):
        raise common.UserError(f"{source!r} is not a folder: pass the training images in class folders (CIFAR-10: train/)")
    classes = class_names(source)
    if not classes:
        raise common.UserError(f"{source!r} has no class folders: pass the training images as <class>/<image> files")
    plan = {part: {} for part in PARTS}
    for name in classes:
        folder = os.path.join(source, name)
        images = find_images(folder, dataset_root=source)
        if len(images) <= val_per_class:
            raise common.UserError(f"class {name!r} of {source!r} has {len(images)} image(s): --val_per_class "
                                   f"{val_per_class} would leave none to train on; pass a smaller --val_per_class")
        n_train = len(images) - val_per_class
        for i, image in enumerate(images):
            plan['train' if i < n_train else 'val'][os.path.join(name, os.path.relpath(image, folder))] = image
    return plan


def resolved(plan):
    """The plan with every image as its real path: what a built split's links resolve to."""
    return {part: {link: os.path.realpath(image) for link, image in links.items()} for part, links in plan.items()}


def links_of(split):
    """A built split as resolved(plan) describes one: every file under SPLIT/train and SPLIT/val, resolved."""
    found = {}
    for part in PARTS:
        root = os.path.join(split, part)
        found[part] = {os.path.relpath(os.path.join(folder, name), root): os.path.realpath(os.path.join(folder, name))
                       for folder, _, names in os.walk(root) for name in names}
    return found


def build(plan, split):
    """The links of plan under split, written into split.partial-PID and then renamed to split. False, with nothing
    left behind, when another run built split meanwhile (two runs given one SELECT at once): the caller checks that."""
    split = os.path.abspath(split)
    partial = f"{split}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        for part, links in plan.items():
            for link, image in links.items():
                target_dir = os.path.dirname(os.path.join(split, part, link))
                os.makedirs(os.path.join(partial, part, os.path.dirname(link)), exist_ok=True)
                # relative to where the link will live: the split keeps working when it moves together with the data
                os.symlink(os.path.relpath(os.path.abspath(image), target_dir), os.path.join(partial, part, link))
        try:
            os.rename(partial, split)
        except OSError:
            if not os.path.isdir(split):
                raise
            shutil.rmtree(partial)
            return False
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return True


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=common.HelpFormatter)
    parser.add_argument('source', help='the training images in class folders (CIFAR-10: train/)')
    parser.add_argument('split', help='the split to build (or check): SPLIT/train and SPLIT/val')
    parser.add_argument('--val_per_class', type=int, default=500,
                        help='images per class in SPLIT/val, the last ones by sorted path (CIFAR-10: 5,000 of 50,000)')
    args = parser.parse_args(argv)
    common.check_flags(args, positive=('val_per_class',))
    plan = planned_split(args.source, args.val_per_class)
    n_classes = len({link.split(os.sep)[0] for link in plan['val']})
    what = (f"{len(plan['train']):,} train and {len(plan['val']):,} val images (the last {args.val_per_class} of each of "
            f"the {n_classes} classes of {args.source})")
    if not os.path.lexists(args.split):
        os.makedirs(os.path.dirname(os.path.abspath(args.split)), exist_ok=True)
        if build(plan, args.split):
            print(f"built {args.split}: {what}")
            return
    expected, found = resolved(plan), links_of(args.split)
    if found != expected:
        differing = sum(expected[part].get(link) != found[part].get(link)
                        for part in PARTS for link in expected[part].keys() | found[part].keys())
        raise common.UserError(f"{args.split!r} exists but is not the split of {what}: {differing:,} of its links are "
                               f"missing, extra or point elsewhere. Pass another split path, or delete {args.split!r} "
                               f"to build it anew (a search chosen on the old split is then no longer comparable)")
    print(f"{args.split}: already the split of {what}")


if __name__ == '__main__':
    common.exit_on_user_error()
    main()
