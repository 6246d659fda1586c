"""The posed 3D body: stature-unit proportions, joints for a walking phase and view, and the
orthographic projection into the crop."""

from __future__ import annotations

import math

import numpy as np

from ppa.synthetic.cameras import (
    STANDING_MOTION,
    STANDING_PROBABILITY,
    VIEW_JITTER,
    VIEW_YAWS,
    CameraProfile,
    Placement,
)
from ppa.synthetic.identity import Identity

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
