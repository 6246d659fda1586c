"""Anti-aliased rasterisation of capsules, ellipses and polygons into material/part layers."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ppa.synthetic.palette import Material, Part


# --- rasterisation --------------------------------------------------------------------------
@dataclass
class _Shape:
    """A rasterised primitive: coverage inside a bounding box plus its local coordinates."""

    rows: slice
    cols: slice
    cover: np.ndarray  # anti-aliased coverage in [0, 1]
    along: np.ndarray | None = None  # 0..1 along a capsule's axis
    across: np.ndarray | None = None  # -1..1 across it (for shading)


class _Canvas:
    """Material, part, coverage and shading maps of one person, painted back to front."""

    def __init__(self, height: int, width: int):
        self.height, self.width = height, width
        self.yy, self.xx = np.mgrid[0:height, 0:width].astype(np.float32)
        self.material = np.zeros((height, width), np.uint8)
        self.part = np.zeros((height, width), np.uint8)
        self.alpha = np.zeros((height, width), np.float32)
        self.shade = np.ones((height, width), np.float32)

    def _box(self, x0: float, x1: float, y0: float, y1: float):
        c0, c1 = max(0, math.floor(x0)), min(self.width, math.ceil(x1) + 1)
        r0, r1 = max(0, math.floor(y0)), min(self.height, math.ceil(y1) + 1)
        if c0 >= c1 or r0 >= r1:
            return None
        return slice(r0, r1), slice(c0, c1)

    def capsule(self, p0, p1, r0: float, r1: float) -> _Shape | None:
        """Tapered capsule from p0 (radius r0) to p1 (radius r1), pixels."""
        pad = max(r0, r1) + 1.0
        box = self._box(
            min(p0[0], p1[0]) - pad,
            max(p0[0], p1[0]) + pad,
            min(p0[1], p1[1]) - pad,
            max(p0[1], p1[1]) + pad,
        )
        if box is None:
            return None
        xs, ys = self.xx[box] - p0[0], self.yy[box] - p0[1]
        dx, dy = p1[0] - p0[0], p1[1] - p0[1]
        length2 = dx * dx + dy * dy
        if length2 < 1e-6:
            t = np.zeros_like(xs)
            across = xs / max(r0, 1e-3)
        else:
            t = np.clip((xs * dx + ys * dy) / length2, 0.0, 1.0)
            across = (ys * dx - xs * dy) / math.sqrt(length2)
        ex, ey = xs - t * dx, ys - t * dy
        radius = r0 + (r1 - r0) * t
        dist = np.sqrt(ex * ex + ey * ey)
        cover = np.clip(radius - dist + 0.5, 0.0, 1.0)
        if length2 >= 1e-6:
            across = np.clip(across / np.maximum(radius, 1e-3), -1.0, 1.0)
        return _Shape(*box, cover, t, np.clip(across, -1.0, 1.0))

    def ellipse(self, center, rx: float, ry: float) -> _Shape | None:
        """Axis-aligned ellipse; `along`/`across` hold the normalised (u, v) offsets."""
        box = self._box(
            center[0] - rx - 1, center[0] + rx + 1, center[1] - ry - 1, center[1] + ry + 1
        )
        if box is None:
            return None
        u = (self.xx[box] - center[0]) / rx
        v = (self.yy[box] - center[1]) / ry
        rho = np.sqrt(u * u + v * v)
        cover = np.clip((1.0 - rho) * min(rx, ry) + 0.5, 0.0, 1.0)
        return _Shape(*box, cover, u, v)

    def polygon(self, vertices: np.ndarray, axis_x: float, half_width: float) -> _Shape | None:
        """Convex polygon (N, 2); `across` is the offset from column axis_x over half_width."""
        box = self._box(
            vertices[:, 0].min() - 1,
            vertices[:, 0].max() + 1,
            vertices[:, 1].min() - 1,
            vertices[:, 1].max() + 1,
        )
        if box is None:
            return None
        xs, ys = self.xx[box], self.yy[box]
        centroid = vertices.mean(axis=0)
        inside = np.full(xs.shape, np.inf, np.float32)
        for a, b in zip(vertices, np.roll(vertices, -1, axis=0), strict=True):
            edge = b - a
            norm = math.hypot(edge[0], edge[1])
            if norm < 1e-6:
                continue
            nx, ny = -edge[1] / norm, edge[0] / norm
            if nx * (centroid[0] - a[0]) + ny * (centroid[1] - a[1]) < 0:
                nx, ny = -nx, -ny
            np.minimum(inside, nx * (xs - a[0]) + ny * (ys - a[1]), out=inside)
        cover = np.clip(inside + 0.5, 0.0, 1.0)
        across = np.clip((xs - axis_x) / max(half_width, 1e-3), -1.0, 1.0)
        return _Shape(*box, cover, None, across)

    def paint(self, shape: _Shape | None, material, part: Part, shade) -> None:
        """Draw a shape over what is there (pixels it mostly covers, and its soft rim)."""
        if shape is None:
            return
        box = (shape.rows, shape.cols)
        current = self.material[box]
        mask = (shape.cover > 0.5) | ((current == Material.BACKGROUND) & (shape.cover > 0.0))
        if not mask.any():
            return
        current[mask] = material[mask] if isinstance(material, np.ndarray) else material
        self.part[box][mask] = part
        self.shade[box][mask] = shade[mask] if isinstance(shade, np.ndarray) else shade
        np.maximum(self.alpha[box], shape.cover, out=self.alpha[box])

    def recolour(self, shape: _Shape | None, material: int, within: tuple[int, ...]) -> None:
        """Change the material of pixels already painted as one of the parts `within` (face
        details on the head, straps on the torso), leaving everything else alone."""
        if shape is None:
            return
        box = (shape.rows, shape.cols)
        mask = (shape.cover > 0.5) & np.isin(self.part[box], within)
        self.material[box][mask] = material


def _cylinder_shade(across: np.ndarray, light_side: float) -> np.ndarray:
    """Brightness across a limb: darker at the rims, brighter towards the key light."""
    return (1.0 - 0.28 * across * across + 0.12 * light_side * across).astype(np.float32)
