"""Procedural renderer of the synthetic re-ID test bed: posed persons with known COCO-17 keypoints.

A person is a 3D body of the 17 COCO joints (plus head and neck volumes), posed by a walking
phase and a view angle, projected orthographically into the crop and rasterised with
anti-aliased capsules, ellipses and convex polygons into a *material map*. Materials are then
coloured per modality: identity colours under the camera's colour cast for visible cameras, a
thermal intensity for infrared ones. Identity therefore lives in

* modality-invariant structure: body proportions, clothing layout (sleeve/leg length, hem
  height, coat, skirt), garment pattern in body coordinates, carried objects, hair shape,
  glasses and beard; and
* modality-specific appearance: garment/skin/hair colours (visible) and garment insulation
  (infrared), so colour never transfers across modalities but shape and pattern do.

Body coordinates: x towards the person's left, y up from the soles, z forward (towards a camera
at yaw 0), in units of the person's stature. Image coordinates: x right, y down, in pixels with
integer values at pixel centres; keypoints use the same convention.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import IntEnum

import cv2
import numpy as np

from ppa.data.records import Modality
from ppa.pose.coco import INDEX, NUM_KEYPOINTS

# Bump whenever the same arguments would render different pictures: the manifest records it, so
# scripts/make_synthetic.py can tell a dataset written by an older renderer.
RENDERER_VERSION = 2

# Score of a ground-truth joint hidden behind another body part, a bag or an occluder: below the
# usual confidence threshold (pose.min_confidence) but not 0, as a detector would report it.
OCCLUDED_SCORE = 0.25
VISIBLE_SCORE = 1.0


class Material(IntEnum):
    """What a pixel shows; coloured per modality by an identity's palette."""

    BACKGROUND = 0
    SKIN = 1
    HAIR = 2
    EYE = 3
    GLASSES = 4
    MOUTH = 5
    TOP = 6
    TOP_ALT = 7  # the second colour of the top's pattern
    BOTTOM = 8
    BOTTOM_ALT = 9
    SHOE = 10
    BAG = 11
    STRAP = 12
    HAT = 13


NUM_MATERIALS = len(Material)


class Part(IntEnum):
    """Which body part is in front at a pixel (decides keypoint occlusion)."""

    NONE = 0
    HEAD = 1
    HAIR_BACK = 2
    TORSO = 3
    COAT = 4
    L_UPPER_ARM = 5
    L_FOREARM = 6
    R_UPPER_ARM = 7
    R_FOREARM = 8
    L_THIGH = 9
    L_SHIN = 10
    R_THIGH = 11
    R_SHIN = 12
    L_FOOT = 13
    R_FOOT = 14
    BAG = 15
    OCCLUDER = 16


# --- shared palettes: identities draw from them, so near-duplicates exist by design -----------
GARMENT_COLOURS = np.array(
    [
        (0.10, 0.10, 0.11),
        (0.27, 0.27, 0.29),
        (0.52, 0.52, 0.52),
        (0.90, 0.90, 0.87),
        (0.12, 0.16, 0.36),
        (0.20, 0.36, 0.70),
        (0.56, 0.70, 0.86),
        (0.72, 0.12, 0.12),
        (0.42, 0.10, 0.15),
        (0.18, 0.45, 0.22),
        (0.44, 0.44, 0.20),
        (0.74, 0.66, 0.46),
        (0.44, 0.28, 0.16),
        (0.88, 0.76, 0.20),
        (0.90, 0.56, 0.66),
        (0.42, 0.22, 0.52),
        (0.90, 0.50, 0.15),
        (0.10, 0.50, 0.50),
    ],
    dtype=np.float32,
)
# Identities draw from a few common garment colours, so colour alone narrows a person down to a
# handful of look-alikes and structure (layout, pattern, shape) has to tell them apart; that
# structure is what shows in both modalities. Trousers come in fewer colours than tops.
TOP_COLOUR_CHOICES = (0, 3, 4, 5, 7, 9, 11, 14)
BOTTOM_COLOUR_CHOICES = (0, 2, 4, 11)
SKIN_TONES = np.array(
    [
        (0.96, 0.80, 0.69),
        (0.90, 0.72, 0.58),
        (0.80, 0.60, 0.45),
        (0.66, 0.46, 0.32),
        (0.50, 0.34, 0.22),
        (0.36, 0.24, 0.16),
    ],
    dtype=np.float32,
)
HAIR_COLOURS = np.array(
    [
        (0.06, 0.05, 0.05),
        (0.20, 0.13, 0.08),
        (0.40, 0.26, 0.14),
        (0.85, 0.72, 0.42),
        (0.62, 0.62, 0.62),
        (0.52, 0.20, 0.08),
    ],
    dtype=np.float32,
)
SHOE_COLOURS = np.array(
    [
        (0.08, 0.08, 0.08),
        (0.92, 0.92, 0.92),
        (0.36, 0.22, 0.12),
        (0.45, 0.45, 0.47),
        (0.14, 0.18, 0.34),
        (0.70, 0.14, 0.14),
    ],
    dtype=np.float32,
)
EYE_COLOUR = (0.08, 0.06, 0.06)
GLASSES_COLOUR = (0.05, 0.05, 0.05)
MOUTH_COLOUR = (0.55, 0.25, 0.25)

# Thermal intensities in [0, 1] before the camera's gain: exposed skin is hot, clothing medium,
# carried objects and glass cold (not heated by the body).
SKIN_HEAT = 0.92
HAIR_HEAT = 0.58
EYE_HEAT = 0.96
GLASSES_HEAT = 0.30
MOUTH_HEAT = 0.95
# Infrared intensity of each garment of GARMENT_COLOURS. Like near-infrared reflectance and
# thermal emissivity of real fabrics, it follows visible brightness only in part: a share comes
# from the garment's luminance, the rest from a fixed per-fabric table in scrambled order. Hue
# never reaches infrared, but one garment looks the same on everybody who wears it, which a
# model can learn. SYSU-MM01's infrared cameras are near-infrared (active illumination, images
# close to grey-level photographs): a high share; RegDB's are far-infrared thermal: lower.
GARMENT_HEAT_RANGE = (0.25, 0.95)
SYSU_LUMINANCE_SHARE = 0.9
REGDB_LUMINANCE_SHARE = 0.6
FABRIC_HEAT = np.array(
    [
        0.62,
        0.50,
        0.74,
        0.56,
        0.80,
        0.47,
        0.68,
        0.53,
        0.77,
        0.59,
        0.71,
        0.83,
        0.50,
        0.65,
        0.56,
        0.74,
        0.62,
        0.68,
    ],
    dtype=np.float32,
)


def garment_heat(luminance_share: float) -> np.ndarray:
    """Infrared intensity of every garment colour for a luminance share in [0, 1]."""
    if not 0.0 <= luminance_share <= 1.0:
        raise ValueError(f"infrared luminance share must be in [0, 1], got {luminance_share}")
    luminance = GARMENT_COLOURS @ np.array([0.3, 0.59, 0.11], np.float32)
    from_luminance = (
        GARMENT_HEAT_RANGE[0] + (GARMENT_HEAT_RANGE[1] - GARMENT_HEAT_RANGE[0]) * luminance
    )
    return (luminance_share * from_luminance + (1.0 - luminance_share) * FABRIC_HEAT).astype(
        np.float32
    )


COAT_HEAT_DROP = 0.06  # a thick coat insulates: cooler than the same fabric as a shirt
PATTERN_HEAT_CONTRAST = 0.18  # least emissivity difference between a pattern's two threads
SHOE_HEAT = 0.42
BAG_HEAT = 0.32
STRAP_HEAT = 0.46
HAT_HEAT = 0.50

# --- body model (stature units) ---------------------------------------------------------------
NECK_LENGTH = 0.035
ANKLE_HEIGHT = 0.045
THIGH_SHARE = 0.52  # of the hip-to-ankle length
UPPER_ARM_LENGTH = 0.175
FOREARM_LENGTH = 0.15
ARM_ABDUCTION = 0.13  # rad: arms hang slightly away from the hips
ELBOW_FLEX = 0.22  # rad, resting flexion
KNEE_FLEX = 0.55  # rad, extra flexion in the swing phase
TORSO_DEPTH = 0.12
RADIUS = {  # limb radii at build 1.0
    "upper_arm": 0.030,
    "forearm": 0.024,
    "hand": 0.022,
    "thigh": 0.048,
    "knee": 0.036,
    "ankle": 0.026,
    "foot": 0.022,
    "neck": 0.030,
}
HEAD_WIDTH_RATIO = 0.80  # horizontal / vertical head semi-axis
FACE_VISIBLE_Z = 0.15  # a facial point is seen when its normal points this much to the camera
EAR_VISIBLE_Z = -0.35
HEAD_TURN_SIGMA = 0.15  # rad, head yaw relative to the body

# Surface points of the head as unit-sphere normals in head coordinates (x left, y up, z front).
HEAD_POINTS = {
    "nose": (0.0, -0.18, 0.98),
    "left_eye": (0.38, 0.14, 0.91),
    "right_eye": (-0.38, 0.14, 0.91),
    "left_ear": (0.99, 0.02, -0.12),
    "right_ear": (-0.99, 0.02, -0.12),
    "mouth": (0.0, -0.55, 0.83),
}

VIEW_YAWS = (0.0, math.pi, -math.pi / 2, math.pi / 2)  # front, back, left side, right side
VIEW_NAMES = ("front", "back", "side", "side")
VIEW_JITTER = 0.28  # rad
STANDING_PROBABILITY = 0.12
STANDING_MOTION = 0.15  # fraction of the stride of a standing person (weight shifts)


@dataclass(frozen=True)
class Pattern:
    """A garment pattern in body coordinates (so it scales and moves with the person)."""

    kind: str  # plain | stripes | checks
    period: float  # stature units
    angle: float  # radians; 0 = horizontal stripes, pi/2 = vertical
    duty: float  # fraction of a period in the second colour
    phase: float

    def mask(self, xb: np.ndarray, yb: np.ndarray) -> np.ndarray:
        """Where the second colour shows, for body coordinates (xb, yb)."""
        if self.kind == "plain":
            return np.zeros(xb.shape, dtype=bool)
        c, s = math.cos(self.angle), math.sin(self.angle)
        a = (xb * s + yb * c) / self.period + self.phase
        if self.kind == "stripes":
            return (a - np.floor(a)) < self.duty
        b = (xb * c - yb * s) / self.period
        return ((a - np.floor(a)) < 0.5) ^ ((b - np.floor(b)) < 0.5)


@dataclass(frozen=True, eq=False)
class Identity:
    """Everything that makes one synthetic person recognisable."""

    pid: int
    female: bool
    # body structure
    stature: float  # relative height, scales the person in the crop
    head_size: float  # vertical head semi-axis
    shoulder_width: float
    hip_width: float
    leg_length: float  # hip height
    arm_length: float  # multiplier of the arm segment lengths
    build: float  # multiplier of limb radii and torso depth
    stride: float  # thigh swing amplitude, rad
    arm_swing: float  # upper-arm swing amplitude, rad
    # clothing layout
    sleeve: float  # covered fraction of the arm chain: 0 sleeveless .. 1 long sleeve
    hem: float  # top's lower edge below the hips as a fraction of the thigh (<0: above)
    coat: bool  # the top flares over the thighs down to the hem
    leg_cover: float  # covered fraction of the leg chain (shorts .. long trousers)
    skirt: float  # skirt length as a fraction of the leg; 0 = none
    top_pattern: Pattern
    bottom_pattern: Pattern
    hair_style: str  # short | long | ponytail | buzz | cap
    glasses: bool
    beard: bool
    carry: str  # none | backpack | shoulder_bag | handbag
    carry_side: int  # +1 the person's left, -1 right
    bag_size: tuple[float, float, float]  # width, height, depth
    # modality-specific appearance, indexed by Material
    colours: np.ndarray  # (NUM_MATERIALS, 3) visible RGB in [0, 1]
    heat: np.ndarray  # (NUM_MATERIALS,) thermal intensity in [0, 1]


# --- identity attribute sets: small and shared, so look-alikes exist --------------------------
# Lengths in stature units; (options, probabilities) pairs where not uniform.
FEMALE_PROBABILITY = 0.5
SHOULDER_WIDTHS = (0.19, 0.22, 0.25, 0.28)
FEMALE_SHOULDER_OFFSET = -0.02
HIP_WIDTHS = (0.14, 0.165, 0.19)
FEMALE_HIP_OFFSET = 0.015
LEG_LENGTHS = (0.45, 0.49, 0.53)  # hip height
HEAD_SIZES = (0.064, 0.07)
ARM_LENGTHS = (0.95, 1.05)
BUILDS = (0.8, 1.0, 1.25)
STRIDES = (0.3, 0.42)
ARM_SWINGS = (0.2, 0.42)
STATURE_SIGMA, STATURE_LIMITS = 0.035, (0.92, 1.08)
COAT_PROBABILITY = 0.18
COAT_HEMS = (0.62, 0.8)  # fraction of the thigh below the hips
HEMS = (-0.16, 0.0, 0.0, 0.28)  # tucked/cropped, at the hips, long shirt
SKIRTS = (0.0, 0.0, 0.32, 0.55)  # women without a coat; fraction of the leg
LEG_COVERS = (1.0, 1.0, 1.0, 0.62, 0.36)  # trousers, capris, shorts
SLEEVES = (0.0, 0.42, 0.42, 1.0, 1.0)  # sleeveless, short, long
HAIR_STYLES = ("short", "long", "ponytail", "buzz", "cap")
HAIR_STYLE_P = {True: (0.25, 0.4, 0.2, 0.0, 0.15), False: (0.5, 0.05, 0.0, 0.25, 0.2)}
GLASSES_PROBABILITY = 0.25
BEARD_PROBABILITY = 0.3  # men
CARRIES = (("none", "backpack", "shoulder_bag", "handbag"), (0.4, 0.25, 0.2, 0.15))
BAG_SIZES = {  # (widths, heights, depth)
    "none": ((0.0,), (0.0,), 0.0),
    "backpack": ((0.17, 0.22), (0.2, 0.26), 0.1),
    "shoulder_bag": ((0.12, 0.16), (0.09, 0.13), 0.05),
    "handbag": ((0.1, 0.14), (0.08, 0.11), 0.05),
}
TOP_PLAIN_PROBABILITY, BOTTOM_PLAIN_PROBABILITY = 0.45, 0.8
PATTERN_PERIODS = (0.045, 0.065, 0.095)
STRIPE_ANGLES = (0.0, 0.0, math.pi / 2, math.pi / 4)  # horizontal twice as common
PATTERN_DUTIES = (0.35, 0.5)
SKIN_HEAT_SIGMA = 0.015


def _choice(rng: np.random.Generator, options, p=None):
    return options[int(rng.choice(len(options), p=p))]


def _sample_pattern(rng: np.random.Generator, plain_probability: float) -> Pattern:
    kinds = ("plain", "stripes", "checks")
    rest = (1.0 - plain_probability) / 3.0
    kind = _choice(rng, kinds, p=(plain_probability, 2 * rest, rest))
    angle = _choice(rng, STRIPE_ANGLES) if kind == "stripes" else 0.0
    return Pattern(
        kind=kind,
        period=_choice(rng, PATTERN_PERIODS),
        angle=angle,
        duty=_choice(rng, PATTERN_DUTIES),
        phase=float(rng.random()),
    )


def _pattern_heat(base: float, alt: float) -> float:
    """The second thread's intensity, at least PATTERN_HEAT_CONTRAST away from the first."""
    diff = alt - base
    if abs(diff) >= PATTERN_HEAT_CONTRAST:
        return float(alt)
    return float(base + (PATTERN_HEAT_CONTRAST if diff >= 0 else -PATTERN_HEAT_CONTRAST))


def _other_colour(rng: np.random.Generator, index: int) -> int:
    """A garment colour different from `index` (a pattern's second colour)."""
    return (index + 1 + int(rng.integers(len(GARMENT_COLOURS) - 1))) % len(GARMENT_COLOURS)


def sample_identity(
    pid: int, rng: np.random.Generator, luminance_share: float = SYSU_LUMINANCE_SHARE
) -> Identity:
    """Draw one identity; attributes come from small shared sets so look-alikes occur."""
    female = bool(rng.random() < FEMALE_PROBABILITY)

    def jitter(scale: float) -> float:
        return float(rng.normal(0.0, scale))

    shoulder = (
        _choice(rng, SHOULDER_WIDTHS) + (FEMALE_SHOULDER_OFFSET if female else 0.0) + jitter(0.004)
    )
    hip = _choice(rng, HIP_WIDTHS) + (FEMALE_HIP_OFFSET if female else 0.0) + jitter(0.003)
    coat = bool(rng.random() < COAT_PROBABILITY)
    skirt = _choice(rng, SKIRTS) if female and not coat else 0.0
    hem = _choice(rng, COAT_HEMS) if coat else _choice(rng, HEMS)
    leg_cover = 0.0 if skirt else _choice(rng, LEG_COVERS)
    carry = _choice(rng, CARRIES[0], p=CARRIES[1])
    widths, heights, depth = BAG_SIZES[carry]
    bag_size = (_choice(rng, widths), _choice(rng, heights), depth)

    top_idx = _choice(rng, TOP_COLOUR_CHOICES)
    top_alt = _other_colour(rng, top_idx)
    bottom_idx = _choice(rng, BOTTOM_COLOUR_CHOICES)
    bottom_alt = _other_colour(rng, bottom_idx)
    colours = np.zeros((NUM_MATERIALS, 3), np.float32)
    colours[Material.SKIN] = SKIN_TONES[rng.integers(len(SKIN_TONES))]
    colours[Material.HAIR] = HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))]
    colours[Material.EYE] = EYE_COLOUR
    colours[Material.GLASSES] = GLASSES_COLOUR
    colours[Material.MOUTH] = MOUTH_COLOUR
    colours[Material.TOP] = GARMENT_COLOURS[top_idx]
    colours[Material.TOP_ALT] = GARMENT_COLOURS[top_alt]
    colours[Material.BOTTOM] = GARMENT_COLOURS[bottom_idx]
    colours[Material.BOTTOM_ALT] = GARMENT_COLOURS[bottom_alt]
    colours[Material.SHOE] = SHOE_COLOURS[rng.integers(len(SHOE_COLOURS))]
    colours[Material.BAG] = GARMENT_COLOURS[rng.integers(len(GARMENT_COLOURS))]
    colours[Material.STRAP] = colours[Material.BAG] * 0.7
    colours[Material.HAT] = GARMENT_COLOURS[rng.integers(len(GARMENT_COLOURS))]

    # Thermal look: each fabric's own infrared intensity; a pattern always shows.
    heat_table = garment_heat(luminance_share)
    top_heat = heat_table[top_idx] - (COAT_HEAT_DROP if coat else 0.0)
    bottom_heat = heat_table[bottom_idx]
    top_alt_heat = _pattern_heat(top_heat, heat_table[top_alt])
    bottom_alt_heat = _pattern_heat(bottom_heat, heat_table[bottom_alt])
    heat = np.zeros(NUM_MATERIALS, np.float32)
    heat[Material.SKIN] = SKIN_HEAT + jitter(SKIN_HEAT_SIGMA)
    heat[Material.HAIR] = HAIR_HEAT
    heat[Material.EYE] = EYE_HEAT
    heat[Material.GLASSES] = GLASSES_HEAT
    heat[Material.MOUTH] = MOUTH_HEAT
    heat[Material.TOP] = top_heat
    heat[Material.TOP_ALT] = top_alt_heat
    heat[Material.BOTTOM] = bottom_heat
    heat[Material.BOTTOM_ALT] = bottom_alt_heat
    heat[Material.SHOE] = SHOE_HEAT
    heat[Material.BAG] = BAG_HEAT
    heat[Material.STRAP] = STRAP_HEAT
    heat[Material.HAT] = HAT_HEAT

    return Identity(
        pid=pid,
        female=female,
        stature=float(np.clip(1.0 + jitter(STATURE_SIGMA), *STATURE_LIMITS)),
        head_size=_choice(rng, HEAD_SIZES) + jitter(0.002),
        shoulder_width=shoulder,
        hip_width=hip,
        leg_length=_choice(rng, LEG_LENGTHS) + jitter(0.005),
        arm_length=_choice(rng, ARM_LENGTHS),
        build=_choice(rng, BUILDS) + jitter(0.02),
        stride=_choice(rng, STRIDES),
        arm_swing=_choice(rng, ARM_SWINGS),
        sleeve=1.0 if coat else _choice(rng, SLEEVES),
        hem=hem,
        coat=coat,
        leg_cover=leg_cover,
        skirt=skirt,
        top_pattern=_sample_pattern(rng, TOP_PLAIN_PROBABILITY),
        bottom_pattern=_sample_pattern(rng, BOTTOM_PLAIN_PROBABILITY),
        hair_style=_choice(rng, HAIR_STYLES, p=HAIR_STYLE_P[female]),
        glasses=bool(rng.random() < GLASSES_PROBABILITY),
        beard=bool(not female and rng.random() < BEARD_PROBABILITY),
        carry=carry,
        carry_side=1 if rng.random() < 0.5 else -1,
        bag_size=bag_size,
        colours=colours,
        heat=np.clip(heat, 0.0, 1.0),
    )


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


# --- posing -----------------------------------------------------------------------------------
def sample_placement(
    identity: Identity,
    camera: CameraProfile,
    height: int,
    width: int,
    rng: np.random.Generator,
    view_jitter: float = VIEW_JITTER,
) -> Placement:
    """Pose and framing of one shot: view, walking phase, scale and position jitter
    (`view_jitter`: the standard deviation of the body's yaw around the camera's view, rad)."""
    view = int(rng.choice(4, p=np.asarray(camera.view_weights) / sum(camera.view_weights)))
    yaw = VIEW_YAWS[view] + float(rng.normal(0.0, view_jitter))
    motion = STANDING_MOTION if rng.random() < STANDING_PROBABILITY else 1.0
    fill = float(rng.uniform(0.8, 0.93)) * identity.stature
    height_px = min(fill, 0.97) * height
    slack = height - height_px
    foot_y = height_px + slack * float(rng.uniform(0.25, 0.9)) - 1.0
    if rng.random() < camera.cut_probability:
        foot_y += float(rng.uniform(0.06, 0.12)) * height_px  # feet run out of the crop
    return Placement(
        yaw=yaw,
        head_turn=float(rng.normal(0.0, HEAD_TURN_SIGMA)),
        phase=float(rng.uniform(0.0, 2 * math.pi)),
        motion=motion,
        height_px=height_px,
        center_x=width / 2 + float(rng.uniform(-0.08, 0.08)) * width,
        foot_y=foot_y,
        scene_x=float(rng.random()),
        detail_seed=int(rng.integers(2**31)),
    )


def _head_point(identity: Identity, center: np.ndarray, normal, turn: float) -> np.ndarray:
    """Surface point of the head (body coordinates) for a unit normal in head coordinates."""
    nx, ny, nz = normal
    c, s = math.cos(turn), math.sin(turn)
    nx, nz = nx * c + nz * s, -nx * s + nz * c
    ry = identity.head_size
    rx = ry * HEAD_WIDTH_RATIO
    return center + np.array([nx * rx, ny * ry, nz * rx], np.float32)


def _body_joints(identity: Identity, placement: Placement) -> dict[str, np.ndarray]:
    """3D joints (body coordinates) of the posed person: COCO-17 plus helper points."""
    ry = identity.head_size
    shoulder_y = 1.0 - 2 * ry - NECK_LENGTH
    hip_y = identity.leg_length
    leg = hip_y - ANKLE_HEIGHT
    thigh, shin = THIGH_SHARE * leg, (1 - THIGH_SHARE) * leg
    upper = UPPER_ARM_LENGTH * identity.arm_length
    fore = FOREARM_LENGTH * identity.arm_length
    stride = identity.stride * placement.motion
    swing = identity.arm_swing * placement.motion
    pts: dict[str, np.ndarray] = {}
    for side, sign, offset in (("left", 1.0, 0.0), ("right", -1.0, math.pi)):
        phase = placement.phase + offset
        alpha = stride * math.sin(phase)
        flex = 0.05 + KNEE_FLEX * placement.motion * max(0.0, math.cos(phase))
        hip = np.array([sign * identity.hip_width / 2, hip_y, 0.0], np.float32)
        knee = hip + thigh * np.array([0.0, -math.cos(alpha), math.sin(alpha)], np.float32)
        beta = alpha - flex
        ankle = knee + shin * np.array([0.0, -math.cos(beta), math.sin(beta)], np.float32)
        arm_swing = swing * (
            0.25 if identity.carry == "handbag" and identity.carry_side == sign else 1.0
        )
        gamma = -arm_swing * math.sin(phase)
        shoulder = np.array([sign * identity.shoulder_width / 2, shoulder_y, 0.0], np.float32)
        d1 = np.array([sign * math.sin(ARM_ABDUCTION), -math.cos(gamma), math.sin(gamma)])
        elbow = shoulder + upper * (d1 / np.linalg.norm(d1)).astype(np.float32)
        bend = gamma + ELBOW_FLEX + 0.3 * max(0.0, math.sin(gamma))
        d2 = np.array([sign * 0.5 * math.sin(ARM_ABDUCTION), -math.cos(bend), math.sin(bend)])
        wrist = elbow + fore * (d2 / np.linalg.norm(d2)).astype(np.float32)
        toe = ankle + np.array([0.0, -0.02, 0.075], np.float32)
        pts.update(
            {
                f"{side}_hip": hip,
                f"{side}_knee": knee,
                f"{side}_ankle": ankle,
                f"{side}_shoulder": shoulder,
                f"{side}_elbow": elbow,
                f"{side}_wrist": wrist,
                f"{side}_toe": toe,
            }
        )
    head = np.array([0.0, 1.0 - ry, 0.01], np.float32)
    pts["head"] = head
    pts["neck"] = np.array([0.0, shoulder_y + 0.01, 0.0], np.float32)
    for name in ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "mouth"):
        pts[name] = _head_point(identity, head, _unit(HEAD_POINTS[name]), placement.head_turn)
    # Keep the lower foot on the ground: walking bobs the whole body up and down.
    lift = ANKLE_HEIGHT - min(pts["left_ankle"][1], pts["right_ankle"][1])
    for value in pts.values():
        value[1] += lift
    return pts


def _unit(v) -> tuple[float, float, float]:
    n = math.sqrt(sum(c * c for c in v))
    return (v[0] / n, v[1] / n, v[2] / n)


class _Projector:
    """Yaw rotation + orthographic projection of body coordinates into the crop."""

    def __init__(self, placement: Placement):
        self.p = placement
        self.c, self.s = math.cos(placement.yaw), math.sin(placement.yaw)

    def rotate(self, point: np.ndarray) -> np.ndarray:
        x, y, z = point
        return np.array([x * self.c + z * self.s, y, -x * self.s + z * self.c], np.float32)

    def image(self, point: np.ndarray) -> tuple[float, float, float]:
        """(column, row, depth) of a body point; larger depth is nearer the camera."""
        x, y, z = self.rotate(point)
        return (
            self.p.center_x + x * self.p.height_px,
            self.p.foot_y - y * self.p.height_px,
            float(z),
        )

    def width(self, across: float, depth: float) -> float:
        """Projected width (pixels) of a box `across` wide and `depth` deep."""
        return (abs(across * self.c) + abs(depth * self.s)) * self.p.height_px


@dataclass
class PersonLayers:
    """A rasterised person: materials, parts, coverage and shading, plus keypoints."""

    material: np.ndarray  # (H, W) uint8 Material
    part: np.ndarray  # (H, W) uint8 Part
    alpha: np.ndarray  # (H, W) float32 coverage
    shade: np.ndarray  # (H, W) float32
    keypoints: np.ndarray  # (17, 3) float32 x, y, score


# Body parts (besides the head) on which a joint may lie and still count as seen.
_JOINT_PARTS: dict[str, tuple[Part, ...]] = {}
for _side, _s in (("left", "L"), ("right", "R")):
    _JOINT_PARTS[f"{_side}_shoulder"] = (Part[f"{_s}_UPPER_ARM"], Part.HAIR_BACK, Part.COAT)
    _JOINT_PARTS[f"{_side}_elbow"] = (Part[f"{_s}_UPPER_ARM"], Part[f"{_s}_FOREARM"])
    _JOINT_PARTS[f"{_side}_wrist"] = (Part[f"{_s}_FOREARM"],)
    _JOINT_PARTS[f"{_side}_hip"] = (Part[f"{_s}_THIGH"], Part.COAT)
    _JOINT_PARTS[f"{_side}_knee"] = (Part[f"{_s}_THIGH"], Part[f"{_s}_SHIN"], Part.COAT)
    _JOINT_PARTS[f"{_side}_ankle"] = (Part[f"{_s}_SHIN"], Part[f"{_s}_FOOT"], Part.COAT)
for _name in ("nose", "left_eye", "right_eye", "left_ear", "right_ear"):
    _JOINT_PARTS[_name] = (Part.HEAD,)


def rasterize_person(
    identity: Identity,
    placement: Placement,
    height: int,
    width: int,
    light_side: float = 0.0,
    occluder: tuple[int, int, int, int] | None = None,
) -> PersonLayers:
    """Draw the posed identity back to front and work out its keypoints and their scores.

    `occluder` (col0, col1, row0, row1) is a scene object in front of the person: the person
    is cut out there and joints behind it count as occluded.
    """
    canvas = _Canvas(height, width)
    proj = _Projector(placement)
    joints = _body_joints(identity, placement)
    img = {name: proj.image(p) for name, p in joints.items()}
    s = placement.height_px
    build = identity.build
    hip_y = float(joints["left_hip"][1] + joints["right_hip"][1]) / 2
    thigh_len = THIGH_SHARE * (identity.leg_length - ANKLE_HEIGHT)
    hem_y = hip_y - identity.hem * thigh_len  # body height of the top's lower edge

    def body_height(rows: slice, cols: slice) -> np.ndarray:
        return (placement.foot_y - canvas.yy[rows, cols]) / s

    def garment(
        shape: _Shape, covered: np.ndarray, cover_mat: int, under_top: bool = False
    ) -> np.ndarray:
        """Per pixel: `cover_mat` where covered, else skin; on the legs (`under_top`) a long
        top or coat covers everything above its hem."""
        mat = np.where(covered, cover_mat, Material.SKIN).astype(np.uint8)
        if under_top:
            mat[body_height(shape.rows, shape.cols) > hem_y] = Material.TOP
        return mat

    items: list[tuple[float, int, Callable[[], None]]] = []  # (depth, tie-break, draw)

    def add(depth: float, draw) -> None:
        items.append((depth, len(items), draw))

    # Limbs ------------------------------------------------------------------------------------
    for side, pre in (("left", "L"), ("right", "R")):
        sh, el, wr = img[f"{side}_shoulder"], img[f"{side}_elbow"], img[f"{side}_wrist"]
        hp, kn, an, to = (
            img[f"{side}_hip"],
            img[f"{side}_knee"],
            img[f"{side}_ankle"],
            img[f"{side}_toe"],
        )
        r = {k: v * s * build for k, v in RADIUS.items()}

        def upper_arm(sh=sh, el=el, r=r, pre=pre):
            shape = canvas.capsule(sh, el, r["upper_arm"], r["upper_arm"] * 0.9)
            if shape is not None:
                mat = garment(shape, 0.5 * shape.along < identity.sleeve, Material.TOP)
                canvas.paint(
                    shape, mat, Part[f"{pre}_UPPER_ARM"], _cylinder_shade(shape.across, light_side)
                )

        def forearm(el=el, wr=wr, r=r, pre=pre):
            shape = canvas.capsule(el, wr, r["forearm"], r["forearm"] * 0.85)
            if shape is not None:
                mat = garment(shape, 0.5 + 0.5 * shape.along < identity.sleeve, Material.TOP)
                canvas.paint(
                    shape, mat, Part[f"{pre}_FOREARM"], _cylinder_shade(shape.across, light_side)
                )
            hand = np.array(wr[:2]) + 0.35 * (np.array(wr[:2]) - np.array(el[:2]))
            canvas.paint(
                canvas.capsule(wr, hand, r["hand"], r["hand"]),
                Material.SKIN,
                Part[f"{pre}_FOREARM"],
                0.95,
            )

        def thigh(hp=hp, kn=kn, r=r, pre=pre):
            shape = canvas.capsule(hp, kn, r["thigh"], r["knee"])
            if shape is not None:
                mat = garment(
                    shape, 0.5 * shape.along < identity.leg_cover, Material.BOTTOM, under_top=True
                )
                canvas.paint(
                    shape, mat, Part[f"{pre}_THIGH"], _cylinder_shade(shape.across, light_side)
                )

        def shin(kn=kn, an=an, r=r, pre=pre):
            shape = canvas.capsule(kn, an, r["knee"], r["ankle"])
            if shape is not None:
                mat = garment(
                    shape,
                    0.5 + 0.5 * shape.along < identity.leg_cover,
                    Material.BOTTOM,
                    under_top=True,
                )
                canvas.paint(
                    shape, mat, Part[f"{pre}_SHIN"], _cylinder_shade(shape.across, light_side)
                )

        def foot(an=an, to=to, r=r, pre=pre):
            canvas.paint(
                canvas.capsule(an, to, r["foot"] * 1.15, r["foot"]),
                Material.SHOE,
                Part[f"{pre}_FOOT"],
                0.9,
            )

        add((sh[2] + el[2]) / 2, upper_arm)
        add((el[2] + wr[2]) / 2 + 1e-4, forearm)
        add((hp[2] + kn[2]) / 2, thigh)
        add((kn[2] + an[2]) / 2, shin)
        add((an[2] + to[2]) / 2 + 1e-4, foot)

    # Torso ------------------------------------------------------------------------------------
    depth = TORSO_DEPTH * build
    thigh_r = RADIUS["thigh"] * build
    neck_mid = proj.image(joints["neck"])
    sh_mid = proj.image((joints["left_shoulder"] + joints["right_shoulder"]) / 2)
    hip_mid = proj.image((joints["left_hip"] + joints["right_hip"]) / 2)
    half_sh = proj.width(identity.shoulder_width + 0.03 * build, depth) / 2
    half_hip = proj.width(identity.hip_width + 1.6 * thigh_r, depth * 0.9) / 2
    neck_r = RADIUS["neck"] * s * build

    def torso():
        # Sloping shoulders: neck -> shoulder top -> shoulder corner stays convex because the
        # neck is narrower than 0.75 of the shoulder half-width.
        top = sh_mid[1] - 0.035 * s
        neck_half = min(1.6 * neck_r, 0.6 * half_sh)
        verts = np.array(
            [
                (neck_mid[0] - neck_half, top),
                (neck_mid[0] + neck_half, top),
                (sh_mid[0] + 0.82 * half_sh, top + 0.013 * s),
                (sh_mid[0] + half_sh, sh_mid[1] + 0.01 * s),
                (hip_mid[0] + half_hip, hip_mid[1]),
                (hip_mid[0] - half_hip, hip_mid[1]),
                (sh_mid[0] - half_sh, sh_mid[1] + 0.01 * s),
                (sh_mid[0] - 0.82 * half_sh, top + 0.013 * s),
            ],
            np.float32,
        )
        shape = canvas.polygon(verts, (sh_mid[0] + hip_mid[0]) / 2, (half_sh + half_hip) / 2)
        if shape is not None:
            above = body_height(shape.rows, shape.cols) > hem_y
            mat = np.where(above, Material.TOP, Material.BOTTOM).astype(np.uint8)
            canvas.paint(shape, mat, Part.TORSO, _cylinder_shade(shape.across, light_side))

    def neck():
        head_base = proj.image(joints["head"] - np.array([0, identity.head_size * 0.6, 0]))
        canvas.paint(
            canvas.capsule(neck_mid, head_base, neck_r, neck_r), Material.SKIN, Part.TORSO, 0.85
        )

    add(sh_mid[2], torso)
    add(sh_mid[2] + 1e-4, neck)

    # Coat / skirt flaring over the thighs ---------------------------------------------------
    flare_len = (
        identity.skirt * (identity.leg_length - ANKLE_HEIGHT)
        if identity.skirt
        else (identity.hem * thigh_len if identity.coat else 0.0)
    )
    if flare_len > 0:
        knees_span = abs(img["left_knee"][0] - img["right_knee"][0]) / 2

        def flare(mat=Material.BOTTOM if identity.skirt else Material.TOP):
            bottom_y = hip_mid[1] + flare_len * s
            half_bottom = max(half_hip * 1.12, knees_span + thigh_r * s * 0.8)
            verts = np.array(
                [
                    (hip_mid[0] - half_hip, hip_mid[1] - 0.02 * s),
                    (hip_mid[0] + half_hip, hip_mid[1] - 0.02 * s),
                    (hip_mid[0] + half_bottom, bottom_y),
                    (hip_mid[0] - half_bottom, bottom_y),
                ],
                np.float32,
            )
            shape = canvas.polygon(verts, hip_mid[0], half_bottom)
            canvas.paint(
                shape,
                mat,
                Part.COAT,
                _cylinder_shade(shape.across, light_side) if shape is not None else 1.0,
            )

        thigh_depth = max(img["left_knee"][2], img["right_knee"][2], hip_mid[2])
        add(thigh_depth + 1e-3, flare)

    # Head, hair, face ------------------------------------------------------------------------
    head = img["head"]
    ry_px = identity.head_size * s
    rx_px = ry_px * HEAD_WIDTH_RATIO
    turn = placement.yaw + placement.head_turn

    def head_and_face():
        shape = canvas.ellipse(head, rx_px, ry_px)
        if shape is None:
            return
        u, v = shape.along, shape.across
        nz_cam = np.sqrt(np.clip(1.0 - u * u - v * v, 0.0, 1.0))
        c, sn = math.cos(turn), math.sin(turn)
        # Surface normal in head coordinates (inverse yaw of the camera-frame normal).
        nx = u * c - nz_cam * sn
        nz = u * sn + nz_cam * c
        ny = -v
        mat = np.full(u.shape, Material.SKIN, np.uint8)
        style = identity.hair_style
        if style in ("short", "ponytail"):
            hair = (ny > 0.35) | ((nz < -0.25) & (ny > -0.45))
        elif style == "long":
            hair = (ny > 0.3) | (nz < -0.05) | ((np.abs(nx) > 0.75) & (ny > -0.6))
        elif style == "buzz":
            hair = (ny > 0.55) | ((nz < -0.5) & (ny > -0.2))
        else:  # cap: hair only at the back below it
            hair = (nz < -0.35) & (ny > -0.4)
        mat[hair] = Material.HAIR
        if identity.beard:
            mat[(ny < -0.3) & (nz > 0.2) & (np.abs(nx) < 0.85)] = Material.HAIR
        if style == "cap":
            mat[ny > 0.28] = Material.HAT
        canvas.paint(shape, mat, Part.HEAD, (0.72 + 0.28 * nz_cam).astype(np.float32))
        # Eyes, mouth and glasses where the face is turned to the camera.
        eye_r = max(0.6, 0.13 * rx_px)
        seen = {
            n: img[n]
            for n in ("left_eye", "right_eye", "mouth")
            if _facing(joints[n], joints["head"], proj) > FACE_VISIBLE_Z
        }
        for name in ("left_eye", "right_eye"):
            if name in seen:
                canvas.recolour(
                    canvas.ellipse(seen[name], eye_r, eye_r), Material.EYE, within=(Part.HEAD,)
                )
        if "mouth" in seen and not identity.beard:
            mouth = seen["mouth"]
            canvas.recolour(
                canvas.ellipse(mouth, 1.6 * eye_r, 0.6 * eye_r), Material.MOUTH, within=(Part.HEAD,)
            )
        if identity.glasses:
            eyes = [seen[n] for n in ("left_eye", "right_eye") if n in seen]
            for side in (n.split("_")[0] for n in ("left_eye", "right_eye") if n in seen):
                eye = seen[f"{side}_eye"]
                canvas.recolour(
                    canvas.ellipse(eye, 1.7 * eye_r, 1.2 * eye_r),
                    Material.GLASSES,
                    within=(Part.HEAD,),
                )
                if _facing(joints[f"{side}_ear"], joints["head"], proj) > EAR_VISIBLE_Z:
                    canvas.recolour(
                        canvas.capsule(eye, img[f"{side}_ear"], 0.5, 0.5),
                        Material.GLASSES,
                        within=(Part.HEAD,),
                    )
            if len(eyes) == 2:
                canvas.recolour(
                    canvas.capsule(eyes[0], eyes[1], 0.5, 0.5),
                    Material.GLASSES,
                    within=(Part.HEAD,),
                )
        if style == "cap":
            brim0 = _head_point(
                identity, joints["head"], _unit((0.0, 0.3, 0.95)), placement.head_turn
            )
            brim1 = brim0 + _rot_y(
                np.array([0.0, 0.0, 0.6 * identity.head_size]), placement.head_turn
            )
            canvas.paint(
                canvas.capsule(proj.image(brim0), proj.image(brim1), 0.18 * ry_px, 0.12 * ry_px),
                Material.HAT,
                Part.HEAD,
                0.8,
            )

    add(max(head[2], sh_mid[2]) + 2e-3, head_and_face)  # the head is never behind the neck

    if identity.hair_style in ("long", "ponytail"):
        back = _head_point(identity, joints["head"], (0.0, 0.0, -1.0), placement.head_turn)
        if identity.hair_style == "long":
            top = proj.image(back + np.array([0, 0.2 * identity.head_size, 0.02]))
            low = proj.image(
                joints["neck"] + _rot_y(np.array([0, -0.06, -0.05]), placement.head_turn)
            )
            radius0, radius1 = 0.95 * rx_px, 1.05 * rx_px
        else:
            top = proj.image(back + np.array([0, 0.2 * identity.head_size, 0.0]))
            low = proj.image(
                back + _rot_y(np.array([0, -1.4 * identity.head_size, -0.02]), placement.head_turn)
            )
            radius0, radius1 = 0.32 * rx_px, 0.22 * rx_px

        def hair_back():
            shape = canvas.capsule(top, low, radius0, radius1)
            canvas.paint(shape, Material.HAIR, Part.HAIR_BACK, 0.8)

        add((top[2] + low[2]) / 2, hair_back)

    # Carried objects ---------------------------------------------------------------------------
    _add_bag(identity, joints, proj, canvas, add, depth, light_side)

    for _, _, draw in sorted(items, key=lambda item: (item[0], item[1])):
        draw()

    # Patterns in body coordinates, after every garment pixel is known.
    for base, alt, pattern in (
        (Material.TOP, Material.TOP_ALT, identity.top_pattern),
        (Material.BOTTOM, Material.BOTTOM_ALT, identity.bottom_pattern),
    ):
        if pattern.kind == "plain":
            continue
        rows, cols = np.nonzero(canvas.material == base)
        if rows.size:
            xb = (cols - placement.center_x) / s
            yb = (placement.foot_y - rows) / s
            flip = pattern.mask(xb.astype(np.float32), yb.astype(np.float32))
            canvas.material[rows[flip], cols[flip]] = alt

    if occluder is not None:
        c0, c1, r0, r1 = occluder
        canvas.material[r0:r1, c0:c1] = Material.BACKGROUND
        canvas.part[r0:r1, c0:c1] = Part.OCCLUDER
        canvas.alpha[r0:r1, c0:c1] = 0.0
    keypoints = _score_keypoints(img, joints, proj, canvas, identity)
    return PersonLayers(canvas.material, canvas.part, canvas.alpha, canvas.shade, keypoints)


def _rot_y(v: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([v[0] * c + v[2] * s, v[1], -v[0] * s + v[2] * c], np.float32)


def _facing(point: np.ndarray, head: np.ndarray, proj: _Projector) -> float:
    """How much a head surface point faces the camera (-1 away .. 1 towards)."""
    d = proj.rotate(point - head)
    n = float(np.linalg.norm(d))
    return float(d[2]) / n if n > 0 else 0.0


def _add_bag(
    identity: Identity,
    joints,
    proj: _Projector,
    canvas: _Canvas,
    add,
    torso_depth,
    light_side: float,
) -> None:
    """Queue the carried object (and its straps) for drawing."""
    if identity.carry == "none":
        return
    s = proj.p.height_px
    w, h, d = identity.bag_size
    side = identity.carry_side
    shoulder_y = float(joints["left_shoulder"][1])
    if identity.carry == "backpack":
        center = np.array([0.0, shoulder_y - 0.03 - h / 2, -(torso_depth / 2 + d / 2)])
    elif identity.carry == "shoulder_bag":
        hip = joints["left_hip" if side > 0 else "right_hip"]
        off = identity.hip_width / 2 + RADIUS["thigh"] * identity.build + d / 2 + 0.01
        center = np.array([side * off, float(hip[1]) + 0.02, 0.0])
    else:  # handbag hangs from the hand
        wrist = joints["left_wrist" if side > 0 else "right_wrist"]
        center = wrist + np.array([0.0, -0.03 - h / 2, 0.0])
    cx, cy, cz = proj.image(center.astype(np.float32))
    # A side bag is flat against the hip: its width runs along z, its depth along x.
    half_w = (proj.width(w, d) if identity.carry == "backpack" else proj.width(d, w)) / 2
    half_h = h * s / 2
    cut = 0.3 * min(half_w, half_h)

    def bag():
        verts = np.array(
            [
                (cx - half_w + cut, cy - half_h),
                (cx + half_w - cut, cy - half_h),
                (cx + half_w, cy - half_h + cut),
                (cx + half_w, cy + half_h),
                (cx - half_w, cy + half_h),
                (cx - half_w, cy - half_h + cut),
            ],
            np.float32,
        )
        shape = canvas.polygon(verts, cx, half_w)
        canvas.paint(
            shape,
            Material.BAG,
            Part.BAG,
            _cylinder_shade(shape.across, light_side) if shape is not None else 1.0,
        )

    add(cz, bag)
    strap_r = max(0.6, 0.011 * s)
    front = torso_depth / 2 + 0.005
    straps: list[tuple[np.ndarray, np.ndarray]] = []
    if identity.carry == "backpack":
        for sign in (1.0, -1.0):
            sh = joints["left_shoulder" if sign > 0 else "right_shoulder"]
            straps.append(
                (
                    sh + np.array([-sign * 0.03, 0.01, front]),
                    sh + np.array([-sign * 0.01, -0.16, front]),
                )
            )
    elif identity.carry == "shoulder_bag":
        sh = joints["right_shoulder" if side > 0 else "left_shoulder"]  # worn crossbody
        top = center + np.array([0.0, h / 2, 0.0])
        for z in (front, -front):
            straps.append((sh + np.array([side * 0.02, 0.01, z]), top + np.array([0, 0, z / 2])))
    for p0, p1 in straps:
        a, b = proj.image(p0.astype(np.float32)), proj.image(p1.astype(np.float32))

        def strap(a=a, b=b):
            canvas.recolour(
                canvas.capsule(a, b, strap_r, strap_r),
                Material.STRAP,
                within=(Part.TORSO, Part.COAT),
            )

        add((a[2] + b[2]) / 2, strap)


def _score_keypoints(
    img, joints, proj: _Projector, canvas: _Canvas, identity: Identity
) -> np.ndarray:
    """(17, 3): 1 where the joint is seen, OCCLUDED_SCORE behind something, 0 out of frame or
    (facial points) turned away from the camera."""
    out = np.zeros((NUM_KEYPOINTS, 3), np.float32)
    torso_depth = proj.image((joints["left_shoulder"] + joints["right_shoulder"]) / 2)[2]
    for name, index in INDEX.items():
        x, y, z = img[name]
        out[index, 0], out[index, 1] = x, y
        col, row = round(x), round(y)
        if not (0 <= x <= canvas.width - 1 and 0 <= y <= canvas.height - 1):
            continue
        if (
            name in ("nose", "left_eye", "right_eye")
            and _facing(joints[name], joints["head"], proj) <= FACE_VISIBLE_Z
        ):
            continue
        if name.endswith("_ear") and _facing(joints[name], joints["head"], proj) <= EAR_VISIBLE_Z:
            continue
        allowed = set(_JOINT_PARTS[name])
        # The torso hides the joints on its far side; near-side joints lie on its surface.
        if (
            name.endswith(("_shoulder", "_hip"))
            and z >= torso_depth - 0.25 * TORSO_DEPTH * identity.build
        ):
            allowed.add(Part.TORSO)
        if identity.carry == "handbag" and name.endswith("_wrist"):
            allowed.add(Part.BAG)
        front = Part(int(canvas.part[row, col]))
        if front is Part.NONE:
            # A joint on the silhouette (ears) may round to a background pixel: it is seen if
            # its own part is right next to it.
            rows = slice(max(0, row - 1), row + 2)
            cols = slice(max(0, col - 1), col + 2)
            seen = bool(np.isin(canvas.part[rows, cols], [int(p) for p in allowed]).any())
        else:
            seen = front in allowed
        out[index, 2] = VISIBLE_SCORE if seen else OCCLUDED_SCORE
    return out


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


# --- rendering --------------------------------------------------------------------------------
@dataclass
class RenderedImage:
    """One synthetic crop with its ground truth."""

    image: np.ndarray  # (H, W, 3) uint8 RGB for visible cameras, (H, W) uint8 for infrared
    keypoints: np.ndarray  # (17, 3) float32: x, y in pixels, score
    person_mask: np.ndarray  # (H, W) bool: where the person is drawn
    placement: Placement
    background: np.ndarray | None = None  # the same shot without the person (on request)


class SyntheticRenderer:
    """Renders identities into crops of one size; each camera scene is built once.

    Cameras with the same `scene_key` share one scene layout (RegDB's co-located pair);
    everything is seeded from `seed`, so a render depends only on its arguments.
    """

    def __init__(
        self,
        height: int,
        width: int,
        cameras: Mapping[int, CameraProfile],
        seed: int,
        scene_keys: Mapping[int, int] | None = None,
        *,
        view_jitter: float = VIEW_JITTER,
        clutter_max: int = CLUTTER_MAX,
    ):
        if height < 32 or width < 16:
            raise ValueError(f"image size {height}x{width} is too small (at least 32x16)")
        self.height, self.width = height, width
        self.cameras = dict(cameras)
        self.seed = seed
        self.scene_keys = dict(scene_keys) if scene_keys else {c: c for c in self.cameras}
        if view_jitter < 0 or clutter_max < 0:
            raise ValueError(
                f"view_jitter and clutter_max must be >= 0, got {view_jitter}, {clutter_max}"
            )
        self.view_jitter = float(view_jitter)
        self.clutter_max = int(clutter_max)
        self._scenes: dict[int, _Scene] = {}

    def camera(self, cam: int) -> CameraProfile:
        try:
            return self.cameras[cam]
        except KeyError:
            raise KeyError(f"no camera {cam} (have {sorted(self.cameras)})") from None

    def _scene(self, cam: int) -> _Scene:
        key = self.scene_keys[cam]
        if key not in self._scenes:
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, 0x5CE7E, key]))
            self._scenes[key] = _Scene(self.height, self.width, self.camera(cam).outdoor, rng)
        return self._scenes[key]

    def placement(self, identity: Identity, cam: int, rng: np.random.Generator) -> Placement:
        return sample_placement(
            identity, self.camera(cam), self.height, self.width, rng, self.view_jitter
        )

    def render(
        self,
        identity: Identity,
        cam: int,
        rng: np.random.Generator,
        placement: Placement | None = None,
        with_background: bool = False,
    ) -> RenderedImage:
        """Render `identity` as seen by camera `cam` (pose drawn from rng unless given)."""
        camera = self.camera(cam)
        if placement is None:
            placement = self.placement(identity, cam, rng)
        h, w = self.height, self.width
        scene = self._scene(cam)
        detail = np.random.default_rng(placement.detail_seed)
        col0 = int(placement.scene_x * (scene.width - w))
        look = scene.heat if camera.is_infrared else scene.rgb
        background = look[:, col0 : col0 + w].copy()
        for _ in range(int(detail.integers(self.clutter_max + 1))):
            self._clutter(background, detail, scene.ground_row, camera.is_infrared)
        occluder = None
        if detail.random() < camera.occluder_probability:
            c0 = int(detail.uniform(0.0, 0.85) * w)
            c1 = c0 + max(2, int(detail.uniform(0.08, 0.16) * w))
            r0 = 0 if detail.random() < 0.5 else int(detail.uniform(0.55, 0.8) * h)
            occluder = (c0, min(c1, w), r0, h)
            colour = _pick(detail, DOOR_COLOURS)
            background[r0:h, c0:c1] = HEAT["clutter"] if camera.is_infrared else colour

        light = camera.light_side * float(rng.uniform(0.6, 1.0))
        layers = rasterize_person(identity, placement, h, w, light, occluder)
        if not camera.is_infrared:
            self._shadow(background, placement)
        if camera.is_infrared:  # emissivity falls off less than reflected light at the rims
            person = identity.heat[layers.material] * (0.85 + 0.15 * layers.shade)
            alpha = layers.alpha
        else:
            person = identity.colours[layers.material] * layers.shade[..., None]
            alpha = layers.alpha[..., None]
        composite = background * (1.0 - alpha) + person * alpha

        finish_seed = int(rng.integers(2**63))
        image = self._finish(composite, camera, np.random.default_rng(finish_seed))
        bg_image = (
            self._finish(background, camera, np.random.default_rng(finish_seed))
            if with_background
            else None
        )
        return RenderedImage(image, layers.keypoints, layers.alpha > 0.5, placement, bg_image)

    def _clutter(
        self, image: np.ndarray, rng: np.random.Generator, ground_row: int, infrared: bool
    ) -> None:
        """A box, bin or sign standing on the ground somewhere in the crop.

        Both looks are drawn from `rng` either way, so co-located visible and thermal cameras
        given the same detail seed place the same objects.
        """
        h, w = self.height, self.width
        bw = rng.uniform(0.12, 0.35) * w
        bh = rng.uniform(0.08, 0.3) * h
        c0 = rng.uniform(-0.2, 1.0) * w
        bottom = rng.uniform(ground_row, h) if ground_row < h else h
        heat, colour = rng.uniform(0.2, 0.5), 0.8 * _pick(rng, GARMENT_COLOURS)
        r0, r1 = int(max(0, bottom - bh)), int(min(h, bottom))
        c0, c1 = int(max(0, c0)), int(min(w, c0 + bw))
        if r0 < r1 and c0 < c1:
            image[r0:r1, c0:c1] = heat if infrared else colour

    def _shadow(self, background: np.ndarray, placement: Placement) -> None:
        """Soft contact shadow under the feet."""
        s = placement.height_px
        rx, ry = 0.2 * s, 0.035 * s
        dist = ((self._canvas_x() - placement.center_x) / rx) ** 2 + (
            (self._canvas_y() - placement.foot_y) / ry
        ) ** 2
        shadow = SHADOW_DARKNESS * np.clip(1.0 - dist, 0.0, 1.0)
        background *= (1.0 - shadow)[..., None]

    def _canvas_x(self) -> np.ndarray:
        return np.arange(self.width, dtype=np.float32)[None, :]

    def _canvas_y(self) -> np.ndarray:
        return np.arange(self.height, dtype=np.float32)[:, None]

    def _finish(
        self, linear: np.ndarray, camera: CameraProfile, rng: np.random.Generator
    ) -> np.ndarray:
        """Camera pipeline: exposure/colour cast or thermal gain, blur, noise, 8-bit."""
        h = self.height
        if camera.is_infrared:
            lo, hi = camera.thermal_range
            lo += float(rng.normal(0.0, 0.03))  # automatic gain control drifts per shot
            hi += float(rng.normal(0.0, 0.03))
            img = (linear - lo) / max(hi - lo, 1e-3)
        else:
            cast = np.asarray(camera.colour_gain, np.float32) * (
                1.0 + rng.normal(0.0, 0.025, 3).astype(np.float32)
            )
            exposure = camera.brightness * float(rng.uniform(0.88, 1.12))
            img = np.clip(linear * cast * exposure, 0.0, 1.0) ** camera.gamma
        sigma = camera.blur * h * float(rng.uniform(0.7, 1.3))
        img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), sigmaX=sigma, sigmaY=sigma)
        img = img + rng.normal(0.0, camera.noise, img.shape).astype(np.float32)
        if camera.is_infrared:  # fixed-pattern column noise of the microbolometer
            columns = np.random.default_rng([self.seed, camera.cam]).normal(
                0.0, camera.noise * 0.5, img.shape[1]
            )
            img = img + columns[None, :].astype(np.float32)
        return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
