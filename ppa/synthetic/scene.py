"""Backgrounds of the synthetic cameras: indoor rooms and outdoor streets, in colour and heat."""

from __future__ import annotations

import cv2
import numpy as np

from ppa.synthetic.palette import GARMENT_COLOURS

# --- scenes -----------------------------------------------------------------------------------
# Each element has a visible colour and a thermal intensity; a camera shows one of the two.
WALL_COLOURS = (
    (0.82, 0.78, 0.68),
    (0.75, 0.76, 0.78),
    (0.70, 0.78, 0.70),
    (0.70, 0.76, 0.84),
    (0.90, 0.86, 0.74),
)
FLOOR_COLOURS = ((0.55, 0.55, 0.55), (0.50, 0.36, 0.24), (0.72, 0.68, 0.60), (0.30, 0.30, 0.32))
DOOR_COLOURS = ((0.45, 0.30, 0.18), (0.50, 0.52, 0.55), (0.88, 0.88, 0.86))
SKY_COLOURS = ((0.62, 0.74, 0.90), (0.80, 0.82, 0.85))
FACADE_COLOURS = ((0.70, 0.66, 0.60), (0.55, 0.50, 0.48), (0.78, 0.76, 0.72), (0.60, 0.42, 0.36))
GROUND_COLOURS = ((0.58, 0.57, 0.55), (0.32, 0.32, 0.34), (0.60, 0.45, 0.38))
GRASS_COLOUR = (0.30, 0.50, 0.22)
CANOPY_COLOUR = (0.20, 0.40, 0.18)
TRUNK_COLOUR = (0.35, 0.25, 0.18)
GLASS_COLOUR = (0.35, 0.45, 0.55)
LAMP_COLOUR = (1.0, 0.97, 0.85)
HEAT = {  # thermal intensity of scene materials
    "wall": 0.30,
    "floor": 0.26,
    "door": 0.29,
    "window": 0.16,
    "poster": 0.31,
    "lamp": 0.85,
    "radiator": 0.70,
    "sky": 0.05,
    "facade": 0.40,
    "glass": 0.22,
    "ground": 0.45,
    "grass": 0.30,
    "canopy": 0.27,
    "trunk": 0.36,
    "clutter": 0.35,
}
SCENE_PANORAMA_WIDTHS = 4  # a camera's scene is this many crops wide; shots see parts of it
SCENE_TEXTURE = 0.08  # amplitude of the low-frequency texture over the scene
CLUTTER_MAX = 2  # small objects per shot in front of the scene, behind the person
SHADOW_DARKNESS = 0.35  # visible cameras: the person's contact shadow on the floor


class _Scene:
    """A camera's static scene, painted once in both looks (RGB and thermal)."""

    def __init__(self, height: int, width: int, outdoor: bool, rng: np.random.Generator):
        self.height, self.width = height, width * SCENE_PANORAMA_WIDTHS
        self.rgb = np.zeros((self.height, self.width, 3), np.float32)
        self.heat = np.zeros((self.height, self.width), np.float32)
        self.ground_row = 0
        (self._outdoor if outdoor else self._indoor)(rng, width)
        size = (self.width // 16 + 2, self.height // 16 + 2)
        texture = cv2.resize(
            rng.normal(0.0, 1.0, size[::-1]).astype(np.float32),
            (self.width, self.height),
            interpolation=cv2.INTER_CUBIC,
        )
        self.rgb *= (1.0 + SCENE_TEXTURE * texture)[..., None]
        self.heat *= 1.0 + SCENE_TEXTURE * texture

    def rect(self, r0: float, r1: float, c0: float, c1: float, rgb, heat: float) -> None:
        r0, r1 = max(0, int(r0)), min(self.height, int(r1))
        c0, c1 = max(0, int(c0)), min(self.width, int(c1))
        if r0 < r1 and c0 < c1:
            self.rgb[r0:r1, c0:c1] = rgb
            self.heat[r0:r1, c0:c1] = heat

    def blob(self, cy: float, cx: float, ry: float, rx: float, rgb, heat: float) -> None:
        r0, r1 = max(0, int(cy - ry)), min(self.height, int(cy + ry) + 1)
        c0, c1 = max(0, int(cx - rx)), min(self.width, int(cx + rx) + 1)
        if r0 >= r1 or c0 >= c1:
            return
        yy, xx = np.mgrid[r0:r1, c0:c1]
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        self.rgb[r0:r1, c0:c1][inside] = rgb
        self.heat[r0:r1, c0:c1][inside] = heat

    def _indoor(self, rng: np.random.Generator, crop_width: int) -> None:
        h = self.height
        wall = _pick(rng, WALL_COLOURS)
        floor = _pick(rng, FLOOR_COLOURS)
        horizon = int(h * rng.uniform(0.6, 0.76))
        self.ground_row = horizon
        self.rect(0, horizon, 0, self.width, wall, HEAT["wall"])
        self.rect(horizon, h, 0, self.width, floor, HEAT["floor"])
        x = rng.uniform(0.0, 0.5) * crop_width
        while x < self.width:
            kind = rng.choice(4)
            w = rng.uniform(0.3, 0.6) * crop_width
            if kind == 0:  # door
                self.rect(
                    horizon - rng.uniform(0.5, 0.62) * h,
                    horizon,
                    x,
                    x + w,
                    _pick(rng, DOOR_COLOURS),
                    HEAT["door"],
                )
            elif kind == 1:  # window
                top = rng.uniform(0.05, 0.2) * h
                self.rect(
                    top, top + rng.uniform(0.2, 0.35) * h, x, x + w, GLASS_COLOUR, HEAT["window"]
                )
            elif kind == 2:  # poster / notice board
                top = rng.uniform(0.15, 0.35) * h
                self.rect(
                    top,
                    top + rng.uniform(0.1, 0.2) * h,
                    x,
                    x + 0.7 * w,
                    _pick(rng, GARMENT_COLOURS),
                    HEAT["poster"],
                )
            else:  # radiator under the wall
                self.rect(
                    horizon - 0.1 * h,
                    horizon - 0.03 * h,
                    x,
                    x + w,
                    (0.85, 0.85, 0.82),
                    HEAT["radiator"],
                )
            x += w + rng.uniform(0.3, 1.0) * crop_width
        self.rect(horizon - 0.02 * h, horizon, 0, self.width, np.multiply(wall, 0.6), HEAT["wall"])
        for k in range(1, 6):  # floor tile joints, closer together towards the horizon
            row = horizon + (h - horizon) * (k / 6) ** 1.5
            self.rect(row, row + 1, 0, self.width, np.multiply(floor, 0.85), HEAT["floor"])
        for x in np.arange(rng.uniform(0, crop_width), self.width, 1.5 * crop_width):
            self.blob(0.03 * h, x, 0.03 * h, 0.25 * crop_width, LAMP_COLOUR, HEAT["lamp"])

    def _outdoor(self, rng: np.random.Generator, crop_width: int) -> None:
        h = self.height
        sky_row = int(h * rng.uniform(0.1, 0.3))
        ground_row = int(h * rng.uniform(0.55, 0.7))
        self.ground_row = ground_row
        self.rect(0, ground_row, 0, self.width, _pick(rng, SKY_COLOURS), HEAT["sky"])
        x = 0.0
        while x < self.width:  # a row of facades with window grids
            w = rng.uniform(0.8, 2.0) * crop_width
            top = sky_row * rng.uniform(0.2, 1.2)
            self.rect(top, ground_row, x, x + w, _pick(rng, FACADE_COLOURS), HEAT["facade"])
            step = rng.uniform(0.25, 0.4) * crop_width
            for wx in np.arange(x + 0.3 * step, x + w - step, step):
                for wy in np.arange(top + 0.05 * h, ground_row - 0.12 * h, 0.14 * h):
                    self.rect(wy, wy + 0.07 * h, wx, wx + 0.5 * step, GLASS_COLOUR, HEAT["glass"])
            x += w
        ground = _pick(rng, GROUND_COLOURS)
        self.rect(ground_row, h, 0, self.width, ground, HEAT["ground"])
        if rng.random() < 0.5:
            self.rect(ground_row, ground_row + 0.06 * h, 0, self.width, GRASS_COLOUR, HEAT["grass"])
        for k in range(1, 5):
            row = ground_row + (h - ground_row) * (k / 5) ** 1.5
            self.rect(row, row + 1, 0, self.width, np.multiply(ground, 0.8), HEAT["ground"])
        for x in np.arange(
            rng.uniform(0, crop_width), self.width, rng.uniform(1.2, 2.0) * crop_width
        ):
            self.rect(
                ground_row - 0.2 * h,
                ground_row + 0.02 * h,
                x - 0.04 * crop_width,
                x + 0.04 * crop_width,
                TRUNK_COLOUR,
                HEAT["trunk"],
            )
            self.blob(
                ground_row - 0.3 * h, x, 0.14 * h, 0.35 * crop_width, CANOPY_COLOUR, HEAT["canopy"]
            )


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]
