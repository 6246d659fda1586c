"""Files of a synthetic dataset: staged writes, the manifest, image encoding, contact sheets."""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ppa.synthetic.renderer import RENDERER_VERSION

log = logging.getLogger(__name__)

MANIFEST_NAME = "synthetic.json"
PREVIEW_NAME = "preview.png"
MANIFEST_VERSION = 1

PREVIEW_IDENTITIES = 4  # rows of the contact sheet
PREVIEW_SHOTS_REGDB = 2  # RegDB columns per modality
PREVIEW_SCALE = 2  # the sheet is upscaled (nearest) so a person can see the faces


@contextmanager
def _staged_directory(root: Path, overwrite: bool) -> Iterator[Path]:
    """Yield an empty hidden sibling of `root`; on success it becomes `root` in one rename."""
    if root.exists():
        if not overwrite:
            raise FileExistsError(f"{root} already exists (pass overwrite=True to rewrite it)")
        _check_replaceable(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = root.parent / f".{root.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        yield staging
        if root.exists():
            _check_replaceable(root)
            retired = root.parent / f".{root.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
            os.replace(root, retired)
            os.replace(staging, root)
            shutil.rmtree(retired)
        else:
            try:
                os.replace(staging, root)
            except OSError as err:  # another writer finished first
                raise FileExistsError(f"{root} appeared while it was being written") from err
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _check_replaceable(root: Path) -> None:
    """Only a dataset this module wrote (or an empty folder) may be replaced."""
    if not root.is_dir():
        raise FileExistsError(f"{root} exists and is not a directory")
    if not (root / MANIFEST_NAME).is_file() and any(root.iterdir()):
        raise FileExistsError(
            f"{root} is not a synthetic dataset written by ppa (no {MANIFEST_NAME}); "
            "refusing to replace it"
        )


def read_manifest(root: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest of a synthetic dataset at `root`, or None where there is none."""
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"unreadable synthetic dataset manifest {path}: {err}") from err


def _write_manifest(folder: Path, dataset: str, parameters: dict, summary: dict) -> None:
    manifest = {
        "writer": "ppa.synthetic.writer",
        "version": MANIFEST_VERSION,
        "renderer_version": RENDERER_VERSION,
        "dataset": dataset,
        "parameters": parameters,
        "summary": summary,
    }
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def _save_image(image: np.ndarray, path: Path, quality: int | None) -> None:
    """JPEG (quality given) or BMP; infrared frames are stored as 3 equal channels like the
    real datasets."""
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    pil = Image.fromarray(image)
    if quality is None:
        pil.save(path, format="BMP")
    else:
        pil.save(path, format="JPEG", quality=quality)


# --- SYSU-MM01 ----------------------------------------------------------------------------


def _contact_sheet(
    path: Path,
    pids: list[int],
    columns: list[tuple[str, int]],
    tiles: Mapping[tuple[int, int], np.ndarray],
    height: int,
    width: int,
) -> None:
    """Identities (rows) x cameras (columns), upscaled, with a header and id labels; a gray
    tile marks a camera that never saw the identity."""
    label_w, header_h = 24, 8
    sheet = np.full(
        (header_h + height * len(pids), label_w + width * len(columns), 3), 255, np.uint8
    )
    for r, pid in enumerate(pids):
        for c, (_, key) in enumerate(columns):
            tile = tiles.get((pid, key))
            y, x = header_h + r * height, label_w + c * width
            if tile is None:
                sheet[y : y + height, x : x + width] = 128
                continue
            sheet[y : y + height, x : x + width] = tile if tile.ndim == 3 else tile[..., None]
    big = Image.fromarray(sheet).resize(
        (sheet.shape[1] * PREVIEW_SCALE, sheet.shape[0] * PREVIEW_SCALE), Image.NEAREST
    )
    draw = ImageDraw.Draw(big)
    for c, (title, _) in enumerate(columns):
        draw.text(((label_w + c * width) * PREVIEW_SCALE + 2, 2), title, fill=(0, 0, 0))
    for r, pid in enumerate(pids):
        draw.text(
            (2, (header_h + r * height + math.floor(height / 2)) * PREVIEW_SCALE),
            f"{pid:04d}",
            fill=(0, 0, 0),
        )
    big.save(path, format="PNG")
