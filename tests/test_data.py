"""data.py's image listing and loading on hostile folders and files: links, bombs, 16-bit PNGs, odd class folders."""
import os

import numpy as np
import pytest
from PIL import Image

import common
import data
import fid


def save_image(path, colour=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), colour, np.uint8)).save(path)


def test_symlink_loops_are_not_followed_and_links_into_another_class_are_not_labelled(tmp_path):
    root, outside = tmp_path / 'data', tmp_path / 'outside'
    for cls in ('airplane', 'cat'):
        for i in range(2):
            save_image(root / cls / f'{i}.png')
    save_image(outside / 'extra.png')
    os.symlink('..', root / 'cat' / 'loop')  # cat/loop/cat/loop/... and airplane seen as cat
    os.symlink(root / 'airplane' / '0.png', root / 'cat' / 'plane.png')
    os.symlink(outside, root / 'cat' / 'more')  # data kept elsewhere: followed
    paths, labels, classes = data.list_images(root)
    assert classes == ['airplane', 'cat']
    named = {os.path.relpath(p, root): label for p, label in zip(paths, labels)}
    assert named == {'airplane/0.png': 0, 'airplane/1.png': 0, 'cat/0.png': 1, 'cat/1.png': 1, 'cat/more/extra.png': 1}


def test_hidden_and_empty_class_folders(tmp_path):
    save_image(tmp_path / 'cat' / '0.png')
    save_image(tmp_path / 'dog' / '0.png')
    save_image(tmp_path / '.ipynb_checkpoints' / '0.png')
    paths, labels, classes = data.list_images(tmp_path)
    assert classes == ['cat', 'dog'] and labels == [0, 1]
    save_image(tmp_path / 'loose.png')
    with pytest.warns(UserWarning, match=r"1 image\(s\) directly in .* are not used .* move them into a class folder"):
        data.list_images(tmp_path)
    os.makedirs(tmp_path / 'empty')
    with pytest.raises(common.UserError, match='class folder.s. empty of .* hold no images: remove them or add images'):
        data.list_images(tmp_path)


def test_a_missing_folder_and_a_folder_of_empty_class_folders_read_differently(tmp_path):
    with pytest.raises(common.UserError, match="image folder .*missing' does not exist"):
        data.list_images(str(tmp_path / 'missing'))
    os.makedirs(tmp_path / 'cat')
    with pytest.raises(common.UserError, match="class folder.s. cat of .* hold no images"):
        data.list_images(tmp_path)


def test_a_batch_larger_than_the_data_set_names_batch_size():
    with pytest.raises(common.UserError, match="--batch_size 16 is larger than the data set's 12 images: pass --batch_size 12 or less"):
        data.ResumableSampler(12, 16)


def test_decompression_bomb_is_an_unreadable_image(tmp_path, monkeypatch):
    save_image(tmp_path / 'cls' / 'fine.png')
    Image.new('L', (100, 100)).save(tmp_path / 'cls' / 'bomb.png')
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 1000)  # 100 x 100 > 2 x 1000: PIL's DecompressionBombError
    dataset = data.ImageFolder(tmp_path, 8)
    assert [dataset[i] is None for i in range(2)] == [True, False]  # bomb.png sorts first


def test_16_bit_png_is_scaled_to_8_bits_not_clipped(tmp_path):
    gradient = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(gradient).save(tmp_path / 'grey16.png')
    assert Image.open(tmp_path / 'grey16.png').mode == 'I;16'
    expected = np.round(gradient / 257)
    for loaded in (np.asarray(data.load_rgb(tmp_path / 'grey16.png')),
                   fid.ImageFiles([tmp_path / 'grey16.png'])[0].numpy()):
        assert loaded.shape == (64, 64, 3) and loaded.dtype == np.uint8
        np.testing.assert_array_equal(loaded[..., 0], expected)
        assert abs(loaded.mean() - 127.5) < 0.5


def test_preview_images_pass_over_unreadable_files(tmp_path):
    for i in range(4):
        save_image(tmp_path / 'cls' / f'{i}.png', colour=50 * i)
    (tmp_path / 'cls' / '0.png').write_bytes(b'')
    samples = data.readable_samples(data.ImageFolder(tmp_path, 8), 2)
    assert [int(image[0, 0, 0]) for image, _ in samples] == [100, 50]  # 2.png of the spread, then the first other
