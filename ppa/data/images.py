"""Decode an image file into an (H, W, 3) uint8 RGB array, whatever its mode.

Every failure surfaces as `CorruptImageError` naming the file, never as an exception from deep
inside PIL (or later, inside a DataLoader worker).
"""

from __future__ import annotations

import os
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ppa.data.errors import CorruptImageError

# Modes that PIL converts to RGB losslessly enough (palette, grey, alpha dropped, CMYK...).
_PIL_RGB_MODES = frozenset(
    {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}
)
# Integer modes holding more than 8 bits per pixel (16-bit thermal/IR captures, 16-bit PNG).
# PIL's own conversion to "L" clips at 255, which turns a 16-bit frame white; we rescale the
# full 16-bit range to 8 bits instead, preserving absolute intensities across images.
_WIDE_INT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
_UINT16_MAX = 65535

# What PIL raises for files it cannot parse or decode.
_DECODE_ERRORS = (
    OSError,
    UnidentifiedImageError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)


def _to_rgb(image: Image.Image, path: Path) -> np.ndarray:
    """Convert a decoded PIL image of any supported mode to (H, W, 3) uint8 RGB."""
    mode = image.mode
    if mode in _WIDE_INT_MODES:
        wide = np.asarray(image).astype(np.float64)
        grey = np.clip(np.rint(wide * (255.0 / _UINT16_MAX)), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "F":
        # Float images carry no range convention; PIL clips them to 0..255 like an 8-bit frame.
        grey = np.asarray(image.convert("L"))
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode in _PIL_RGB_MODES:
        return np.asarray(image.convert("RGB"))
    raise CorruptImageError(path, f"unsupported image mode {mode!r}")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as a contiguous (H, W, 3) uint8 RGB array.

    Grey and infrared images (L, I;16, ...) become three equal channels; alpha is dropped.
    Raises CorruptImageError naming the file for missing, empty, truncated or non-image files.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as err:
        raise CorruptImageError(path, f"cannot access file ({err.strerror or err})") from err
    if not path.is_file():
        raise CorruptImageError(path, "not a regular file")
    if size == 0:
        raise CorruptImageError(path, "file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            # A truncated or odd file must fail loudly here, not as a warning in a worker.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                array = _to_rgb(image, path)
    except CorruptImageError:
        raise
    except _DECODE_ERRORS as err:
        raise CorruptImageError(path, f"{type(err).__name__}: {err}") from err
    if array.ndim != 3 or array.shape[2] != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise CorruptImageError(path, f"decoded to an unusable array of shape {array.shape}")
    return np.ascontiguousarray(array)


def is_readable_image(path: str | os.PathLike, *, decode: bool = False) -> bool:
    """True when `path` looks like a usable image.

    The default check is cheap: the file exists, is not empty, PIL recognises its header and
    its structure verifies (no pixel decoding). A JPEG truncated inside its pixel data can pass
    it; `decode=True` decodes the whole image (what `read_image` does) to be sure.
    """
    path = Path(path)
    if decode:
        try:
            read_image(path)
        except CorruptImageError:
            return False
        return True
    try:
        if not path.is_file() or path.stat().st_size == 0:
            return False
        with Image.open(path) as image:
            image.verify()
    except _DECODE_ERRORS:
        return False
    return True
