"""scripts/selection_split.py on a small folder of class folders: the split is deterministic, disjoint, covers every
training image once, reads as image folders, survives a move, and is never silently replaced."""
import os
import shutil

from conftest import REPO, run_in_process
from data import list_images

# class -> image count; file names sort differently from their numbers, so "last" must mean sorted
CLASSES = {'cat': 5, 'dog': 4, 'ship': 6}


def make_source(root):
    for name, n in CLASSES.items():
        os.makedirs(root / name)
        for i in (10 ** 3 - k for k in range(n)):  # 1000, 999, 998, ...: unsorted creation order
            (root / name / f'{i}.jpg').write_bytes(f'{name} {i}'.encode())
    return root


def split(source, out, *extra):
    return run_in_process(os.path.join('scripts', 'selection_split.py'), source, out, *extra)


def resolved_listing(folder):
    """{path under folder: the real path it resolves to}."""
    return {os.path.relpath(os.path.join(d, f), folder): os.path.realpath(os.path.join(d, f))
            for d, _, files in os.walk(folder) for f in files}


def test_split_is_deterministic_disjoint_and_covers_every_training_image_once(tmp_path):
    source = make_source(tmp_path / 'train')
    first, second = split(source, tmp_path / 'a', '--val_per_class', 2), split(source, tmp_path / 'b', '--val_per_class', 2)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert 'built' in first.stdout and '9 train and 6 val images (the last 2 of each of the 3 classes' in first.stdout
    a = {part: resolved_listing(tmp_path / 'a' / part) for part in ('train', 'val')}
    b = {part: resolved_listing(tmp_path / 'b' / part) for part in ('train', 'val')}
    assert a == b
    train, val = set(a['train'].values()), set(a['val'].values())
    assert not train & val
    assert sorted(train | val) == sorted(os.path.realpath(p) for p in list_images(source)[0])
    assert len(a['train']) + len(a['val']) == sum(CLASSES.values())  # no image twice within a part
    # val: the last 2 names of each class in sorted order ('1000.jpg' sorts first), as the trainers sort them
    assert sorted(a['val']) == sorted(os.path.join(name, f) for name in CLASSES for f in ('998.jpg', '999.jpg'))
    # the trainers read both parts as class folders with the source's classes
    for part in ('train', 'val'):
        paths, labels, classes = list_images(tmp_path / 'a' / part)
        assert classes == sorted(CLASSES) and len(paths) == len(a[part]) and sorted(set(labels)) == [0, 1, 2]


def test_links_are_relative_so_the_split_moves_with_its_data(tmp_path):
    source = make_source(tmp_path / 'tree' / 'data' / 'train')
    assert split(source, tmp_path / 'tree' / 'out' / 'select', '--val_per_class', 1).returncode == 0
    shutil.move(tmp_path / 'tree', tmp_path / 'moved')
    paths = list_images(tmp_path / 'moved' / 'out' / 'select' / 'val')[0]
    assert [open(p, 'rb').read() for p in paths] == [b'cat 999', b'dog 999', b'ship 999']


def test_two_runs_building_one_split_at_once_both_go_on_with_the_one_that_landed(tmp_path, monkeypatch):
    import importlib.util
    spec = importlib.util.spec_from_file_location('selection_split', os.path.join(REPO, 'scripts', 'selection_split.py'))
    selection_split = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(selection_split)
    source = make_source(tmp_path / 'train')
    plan = selection_split.planned_split(str(source), 2)
    rename = os.rename

    def other_run_lands_first(partial, target):  # the other run renames its split into place just before this one
        monkeypatch.setattr(os, 'rename', rename)
        assert selection_split.build(plan, target + '.other_run')
        rename(target + '.other_run', target)
        rename(partial, target)
    monkeypatch.setattr(os, 'rename', other_run_lands_first)
    assert selection_split.build(plan, str(tmp_path / 'select')) is False
    assert not list(tmp_path.glob('select.partial-*'))
    assert selection_split.links_of(str(tmp_path / 'select')) == selection_split.resolved(plan)


def test_a_built_split_is_checked_not_rebuilt_and_another_one_is_refused(tmp_path):
    source = make_source(tmp_path / 'train')
    assert split(source, tmp_path / 'select').returncode != 0  # 500 per class would leave no training image
    assert not (tmp_path / 'select').exists() and not list(tmp_path.glob('select.partial-*'))
    assert split(source, tmp_path / 'select', '--val_per_class', 2).returncode == 0
    (tmp_path / 'select' / 'train_stats.npz').write_bytes(b'')  # what scripts/cifar10.sh keeps beside the parts
    before = {part: resolved_listing(tmp_path / 'select' / part) for part in ('train', 'val')}

    again = split(source, tmp_path / 'select', '--val_per_class', 2)
    assert again.returncode == 0 and 'already the split of 9 train and 6 val images' in again.stdout

    other = split(source, tmp_path / 'select', '--val_per_class', 1)
    assert other.returncode == 2 and 'exists but is not the split of' in other.stderr
    assert '6 of its links are missing, extra or point elsewhere' in other.stderr
    (source / 'cat' / '0.jpg').write_bytes(b'new')  # an image added to the source since
    grown = split(source, tmp_path / 'select', '--val_per_class', 2)
    assert grown.returncode == 2 and 'delete' in grown.stderr
    assert {part: resolved_listing(tmp_path / 'select' / part) for part in ('train', 'val')} == before
