"""read_image / is_readable_image on real files of every mode and every kind of damage."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ppa.data.errors import CorruptImageError
from ppa.data.images import is_readable_image, read_image


def _save(path, array, mode=None, **kwargs):
    image = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    image.save(path, **kwargs)
    return path


def test_rgb_png_round_trips_exactly(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (6, 4, 3), dtype=np.uint8)
    out = read_image(_save(tmp_path / "a.png", rgb))
    assert out.dtype == np.uint8 and out.shape == (6, 4, 3)
    np.testing.assert_array_equal(out, rgb)


def test_grey_image_becomes_three_equal_channels(tmp_path):
    grey = np.arange(24, dtype=np.uint8).reshape(6, 4) * 10
    out = read_image(_save(tmp_path / "ir.png", grey))
    assert out.shape == (6, 4, 3)
    for channel in range(3):
        np.testing.assert_array_equal(out[:, :, channel], grey)


def test_sixteen_bit_infrared_is_rescaled_not_clipped(tmp_path):
    wide = np.array([[0, 257, 65535], [32896, 1000, 514]], dtype=np.uint16)
    path = tmp_path / "thermal.png"
    Image.fromarray(wide).save(path)
    assert Image.open(path).mode.startswith("I")
    out = read_image(path)
    # 16-bit range -> 8 bits: v * 255 / 65535 = v / 257, rounded.
    expected = np.array([[0, 1, 255], [128, 4, 2]], dtype=np.uint8)
    for channel in range(3):
        np.testing.assert_array_equal(out[:, :, channel], expected)


def test_rgba_drops_alpha_and_palette_expands(tmp_path):
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 10, 20, 30, 0
    out = read_image(_save(tmp_path / "a.png", rgba))
    np.testing.assert_array_equal(out, np.broadcast_to([10, 20, 30], (2, 2, 3)))

    palette = Image.new("P", (3, 2))
    palette.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    palette.putpixel((1, 0), 1)
    palette.save(tmp_path / "p.png")
    out = read_image(tmp_path / "p.png")
    assert out[0, 1].tolist() == [200, 100, 50] and out[0, 0].tolist() == [0, 0, 0]


def test_jpeg_reads_as_rgb(tmp_path):
    rgb = np.full((16, 8, 3), 120, dtype=np.uint8)
    out = read_image(_save(tmp_path / "a.jpg", rgb, quality=95))
    assert out.shape == (16, 8, 3)
    assert np.abs(out.astype(int) - 120).max() <= 2


@pytest.mark.parametrize("damage", ["empty", "truncated", "text", "missing", "folder"])
def test_damaged_files_raise_corrupt_image_error_naming_the_file(tmp_path, damage):
    good = _save(
        tmp_path / "good.jpg",
        np.random.default_rng(1).integers(0, 256, (64, 32, 3), dtype=np.uint8),
        quality=90,
    )
    bad = tmp_path / f"{damage}.jpg"
    if damage == "empty":
        bad.write_bytes(b"")
    elif damage == "truncated":
        data = good.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    elif damage == "text":
        bad.write_text("not an image at all")
    elif damage == "folder":
        bad.mkdir()
    with pytest.raises(CorruptImageError) as info:
        read_image(bad)
    assert str(bad) in str(info.value)
    assert info.value.path == bad
    assert not is_readable_image(bad, decode=True)


def test_is_readable_image_cheap_and_full_checks(tmp_path):
    good = _save(
        tmp_path / "good.jpg",
        np.random.default_rng(2).integers(0, 256, (64, 32, 3), dtype=np.uint8),
    )
    assert is_readable_image(good) and is_readable_image(good, decode=True)
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello")
    for name in ("empty.jpg", "text.jpg", "absent.jpg"):
        assert not is_readable_image(tmp_path / name)
    # A JPEG cut inside its pixel data keeps a valid header: only decoding finds the damage.
    data = good.read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    assert is_readable_image(tmp_path / "cut.jpg")
    assert not is_readable_image(tmp_path / "cut.jpg", decode=True)
