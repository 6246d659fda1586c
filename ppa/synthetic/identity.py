"""Identities of the synthetic set: body proportions, clothing, patterns, carried objects and
the attribute sets they are drawn from (small and shared, so look-alikes exist)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ppa.synthetic.palette import (
    BAG_HEAT,
    BOTTOM_COLOUR_CHOICES,
    COAT_HEAT_DROP,
    EYE_COLOUR,
    EYE_HEAT,
    GARMENT_COLOURS,
    GLASSES_COLOUR,
    GLASSES_HEAT,
    HAIR_COLOURS,
    HAIR_HEAT,
    HAT_HEAT,
    MOUTH_COLOUR,
    MOUTH_HEAT,
    NUM_MATERIALS,
    PATTERN_HEAT_CONTRAST,
    SHOE_COLOURS,
    SHOE_HEAT,
    SKIN_HEAT,
    SKIN_TONES,
    STRAP_HEAT,
    SYSU_LUMINANCE_SHARE,
    TOP_COLOUR_CHOICES,
    Material,
    garment_heat,
)


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
