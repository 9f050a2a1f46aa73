import math
import re
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from causality import causality_table, load_images, make_tokens, r2_avg
from common import UserError


def naive_r2_avg(token, earlier_tokens):
    current = token.reshape(len(token), -1).numpy()
    earlier = np.concatenate([t.reshape(len(t), -1).numpy() for t in earlier_tokens], axis=1)
    correlation = np.corrcoef(np.concatenate([current, earlier], axis=1), rowvar=False)
    return (correlation[:current.shape[1], current.shape[1]:] ** 2).max(axis=1).mean()


def test_r2_avg_matches_naive_corrcoef():
    generator = torch.Generator().manual_seed(0)
    n = 40
    first = torch.randn(n, 5, generator=generator, dtype=torch.float64)
    second = torch.randn(n, 1, 2, 2, generator=generator, dtype=torch.float64) + 3
    # mix in the earlier tokens so the maxima are neither tiny nor all equal
    token = (0.7 * first[:, :3] @ torch.randn(3, 6, generator=generator, dtype=torch.float64)
             + torch.randn(n, 6, generator=generator, dtype=torch.float64)).reshape(n, 2, 3)
    expected = naive_r2_avg(token, [first, second])
    assert r2_avg(token, [first, second]) == pytest.approx(expected, abs=1e-12)
    assert r2_avg(token, [first, second], chunk=2) == pytest.approx(expected, abs=1e-12)


def test_exact_linear_function_of_earlier_element_gives_one():
    generator = torch.Generator().manual_seed(1)
    earlier = torch.rand(200, 10, generator=generator, dtype=torch.float64)
    token = torch.stack([3 * earlier[:, 4] - 2, -0.5 * earlier[:, 0] + 1], dim=1)
    assert r2_avg(token, [earlier[:, :5], earlier[:, 5:]]) == pytest.approx(1.0, abs=1e-12)


def test_independent_noise_gives_r2_near_zero():
    generator = torch.Generator().manual_seed(2)
    n, earlier_elements = 4000, 200
    # uniform noise has mean 0.5: forgetting to centre would show up as large r^2
    token = torch.rand(n, 50, generator=generator, dtype=torch.float64)
    earlier = torch.rand(n, earlier_elements, generator=generator, dtype=torch.float64)
    # n r^2 is ~chi^2(1) per pair; the max of m of them is about 2 ln m, so allow twice that
    assert r2_avg(token, [earlier]) < 4 * math.log(earlier_elements) / n


def test_token_shapes_and_last_tokens_are_the_image():
    images = torch.rand(6, 3, 32, 32, dtype=torch.float64)
    raster = make_tokens(images, "raster")
    assert [tuple(t.shape) for t in raster] == [(6, 3, 16, 16)] * 4
    top, bottom = torch.cat(raster[:2], dim=3), torch.cat(raster[2:], dim=3)
    assert torch.equal(torch.cat([top, bottom], dim=2), images)  # raster order: TL, TR, BL, BR

    scale = make_tokens(images, "scale-wise")
    assert [tuple(t.shape) for t in scale] == [(6, 3, s, s) for s in (8, 16, 24, 32)]
    assert torch.equal(scale[3], images)

    spectral = make_tokens(images, "spectral")
    assert [tuple(t.shape) for t in spectral] == [(6, 3, 32, 32)] * 4
    assert torch.allclose(spectral[3], images, atol=1e-12)
    assert not torch.allclose(spectral[2], images, atol=1e-3)


def test_load_images_folder_and_npz(tmp_path, capsys):
    Image.new("L", (32, 32), 128).save(tmp_path / "grey.png")
    (tmp_path / "sub").mkdir()
    rgba = np.zeros((60, 90, 4), np.uint8)
    rgba[:, 15:75] = (255, 0, 0, 255)  # the centre square is red, the cropped margins black
    Image.fromarray(rgba).save(tmp_path / "sub" / "wide.png")
    (tmp_path / "sub" / "broken.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "notes.txt").write_text("ignored: not an image extension")

    images = load_images(str(tmp_path))
    assert "skipped 1 unreadable" in capsys.readouterr().out
    assert images.shape == (2, 3, 32, 32) and images.dtype == torch.float64
    assert torch.allclose(images[0], torch.full((3, 32, 32), 128 / 255, dtype=torch.float64))
    assert torch.allclose(images[1, 0], torch.ones(32, 32, dtype=torch.float64), atol=0.02)
    assert images[1, 1:].abs().max() < 0.02

    array = np.random.default_rng(0).integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "images.npz", array)
    images = load_images(str(tmp_path / "images.npz"), max_images=4)
    expected = torch.from_numpy(array[[0, 3, 6, 9]]).permute(0, 3, 1, 2).double() / 255
    assert torch.equal(images, expected)


def test_spectral_more_causal_than_raster_on_cifar10_subset(cifar_sample_dir):
    table = causality_table(load_images(str(cifar_sample_dir), max_images=500))
    for i, (spectral, raster) in enumerate(zip(table["spectral"], table["raster"]), start=2):
        assert spectral > raster, f"token {i}: spectral {spectral:.3f} <= raster {raster:.3f}"
    assert table["spectral"][2] > 0.98  # the image is nearly determined by its w=24 low-pass


def test_too_few_images_are_refused_not_tabled(tmp_path, monkeypatch):
    import causality
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    monkeypatch.setattr(sys, "argv", ["causality.py", str(tmp_path)])
    with pytest.raises(UserError, match="3 readable image.s.: R2_avg needs at least 100"):
        causality.main()


@pytest.mark.parametrize("flags, message", [
    (("--max-images", "0"), "--max-images 0: R2_avg needs at least 100 images"),
    (("--json", "{tmp}"), "--json: '{tmp}' is a folder: pass a file path"),
])
def test_bad_flags_stop_before_reading_images(tmp_path, monkeypatch, flags, message):
    import causality
    monkeypatch.setattr(causality, "load_images", lambda *a: pytest.fail("images read before the flags were checked"))
    monkeypatch.setattr(sys, "argv", ["causality.py", str(tmp_path), *(f.format(tmp=tmp_path) for f in flags)])
    with pytest.raises(UserError, match=re.escape(message.format(tmp=tmp_path))):
        causality.main()


def test_an_npz_that_is_not_one_or_has_no_arr_0_is_named(tmp_path):
    (tmp_path / "random.npz").write_bytes(np.random.default_rng(0).bytes(3000))
    with pytest.raises(UserError, match="random.npz: not a readable .npz of arrays"):
        load_images(str(tmp_path / "random.npz"))
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(UserError, match="other.npz: no arr_0 in this .npz"):
        load_images(str(tmp_path / "other.npz"))


def test_nchw_npz_is_refused_with_the_transpose(tmp_path):
    np.savez(tmp_path / "nchw.npz", arr_0=np.zeros((4, 3, 32, 32), np.uint8))
    with pytest.raises(UserError, match=r"arr_0 must be uint8 images \(N, H, W, 3\).*arr.transpose\(0, 2, 3, 1\)"):
        load_images(str(tmp_path / "nchw.npz"))
