"""Carried objects (bags and their straps) and the visibility scoring of ground-truth joints."""

from __future__ import annotations

import math

import numpy as np

from ppa.pose.coco import INDEX, NUM_KEYPOINTS
from ppa.synthetic.body import EAR_VISIBLE_Z, FACE_VISIBLE_Z, RADIUS, TORSO_DEPTH, _Projector
from ppa.synthetic.identity import Identity
from ppa.synthetic.palette import OCCLUDED_SCORE, VISIBLE_SCORE, Material, Part
from ppa.synthetic.raster import _Canvas, _cylinder_shade

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
