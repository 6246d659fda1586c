"""Camera profiles (modality, indoor/outdoor, gain, blur, noise, views) of the SYSU-MM01 and
RegDB layouts, and where a person stands in a shot."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ppa.data.records import Modality

VIEW_YAWS = (0.0, math.pi, -math.pi / 2, math.pi / 2)  # front, back, left side, right side
VIEW_NAMES = ("front", "back", "side", "side")
VIEW_JITTER = 0.28  # rad
STANDING_PROBABILITY = 0.12
STANDING_MOTION = 0.15  # fraction of the stride of a standing person (weight shifts)


@dataclass(frozen=True)
class Placement:
    """Pose and framing of one shot; RegDB's visible/thermal pairs share one."""

    yaw: float  # body yaw, rad (0 = facing the camera)
    head_turn: float  # head yaw relative to the body, rad
    phase: float  # walking phase, rad
    motion: float  # 1 walking, small = standing
    height_px: float  # pixels per stature unit
    center_x: float  # pixel column of the body axis
    foot_y: float  # pixel row of the soles
    scene_x: float  # where in the camera's scene panorama the crop lies (0..1)
    detail_seed: int  # seeds background clutter and occluders

    @property
    def view(self) -> str:
        """front | back | side (nearest canonical view)."""
        k = int(np.argmin([abs(math.remainder(self.yaw - y, 2 * math.pi)) for y in VIEW_YAWS]))
        return VIEW_NAMES[k]


@dataclass(frozen=True)
class CameraProfile:
    """Fixed properties of one camera: modality, scene, optics and image pipeline."""

    cam: int
    modality: Modality
    outdoor: bool
    colour_gain: tuple[float, float, float]  # white balance / colour cast (visible)
    brightness: float
    gamma: float
    thermal_range: tuple[float, float]  # intensities mapped to black / white (infrared)
    blur: float  # Gaussian sigma as a fraction of the image height
    noise: float  # sensor noise sigma on [0, 1]
    jpeg_quality: int
    view_weights: tuple[float, float, float, float]  # front, back, left side, right side
    light_side: float  # direction of the key light across the body (-1 .. 1)
    occluder_probability: float  # a pole/pillar in front of the person
    cut_probability: float  # the crop cuts the feet off

    @property
    def is_infrared(self) -> bool:
        return self.modality is Modality.INFRARED


def _visible(cam, outdoor, gain, brightness, gamma, blur, noise, quality, views, light):
    return CameraProfile(
        cam,
        Modality.VISIBLE,
        outdoor,
        gain,
        brightness,
        gamma,
        (0.0, 1.0),
        blur,
        noise,
        quality,
        views,
        light,
        0.06,
        0.04,
    )


def _infrared(cam, outdoor, thermal_range, blur, noise, quality, views):
    return CameraProfile(
        cam,
        Modality.INFRARED,
        outdoor,
        (1.0, 1.0, 1.0),
        1.0,
        1.0,
        thermal_range,
        blur,
        noise,
        quality,
        views,
        0.0,
        0.06,
        0.04,
    )


# SYSU-MM01: cams 1, 2 indoor visible, 3 indoor infrared, 4, 5 outdoor visible, 6 outdoor IR.
SYSU_CAMERAS: dict[int, CameraProfile] = {
    1: _visible(1, False, (1.08, 1.0, 0.84), 1.0, 1.0, 0.004, 0.012, 90, (0.4, 0.4, 0.1, 0.1), 0.6),
    2: _visible(
        2, False, (0.92, 1.04, 1.08), 0.85, 1.1, 0.006, 0.02, 85, (0.3, 0.3, 0.2, 0.2), -0.4
    ),
    3: _infrared(3, False, (0.12, 1.0), 0.006, 0.025, 85, (0.35, 0.35, 0.15, 0.15)),
    4: _visible(4, True, (1.0, 1.0, 1.06), 1.12, 0.9, 0.004, 0.012, 88, (0.2, 0.2, 0.3, 0.3), 0.8),
    5: _visible(
        5, True, (0.94, 0.98, 1.1), 0.9, 1.05, 0.007, 0.018, 80, (0.3, 0.3, 0.2, 0.2), -0.7
    ),
    6: _infrared(6, True, (0.02, 0.96), 0.008, 0.035, 80, (0.25, 0.25, 0.25, 0.25)),
}
# RegDB: one co-located visible/thermal camera pair outdoors (cam 1 visible, cam 2 thermal).
REGDB_CAMERAS: dict[int, CameraProfile] = {
    1: _visible(1, True, (1.0, 1.0, 1.0), 1.0, 1.0, 0.005, 0.015, 95, (0.5, 0.5, 0.0, 0.0), 0.5),
    2: _infrared(2, True, (0.05, 1.0), 0.008, 0.03, 95, (0.5, 0.5, 0.0, 0.0)),
}
