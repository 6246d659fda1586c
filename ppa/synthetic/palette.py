"""Materials, body parts and the shared colour and heat palettes of rendered persons.

Colours are what visible cameras see, heat values what infrared cameras see; identities draw
from these shared palettes, so near-duplicates exist by design."""

from __future__ import annotations

from enum import IntEnum

import numpy as np

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
