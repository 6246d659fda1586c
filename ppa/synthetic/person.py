"""Rasterising a posed person (body, clothes, hair, face, carried objects) into material and
part layers, with the ground-truth keypoints scored by what the camera sees.

`rasterize_person` is one long function on purpose: the drawing order is the occlusion order,
and it reads best top to bottom."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ppa.synthetic.accessories import _add_bag, _facing, _rot_y, _score_keypoints
from ppa.synthetic.body import (
    ANKLE_HEIGHT,
    EAR_VISIBLE_Z,
    FACE_VISIBLE_Z,
    HEAD_WIDTH_RATIO,
    RADIUS,
    THIGH_SHARE,
    TORSO_DEPTH,
    _body_joints,
    _head_point,
    _Projector,
    _unit,
)
from ppa.synthetic.cameras import Placement
from ppa.synthetic.identity import Identity
from ppa.synthetic.palette import Material, Part
from ppa.synthetic.raster import _Canvas, _cylinder_shade, _Shape


@dataclass
class PersonLayers:
    """A rasterised person: materials, parts, coverage and shading, plus keypoints."""

    material: np.ndarray  # (H, W) uint8 Material
    part: np.ndarray  # (H, W) uint8 Part
    alpha: np.ndarray  # (H, W) float32 coverage
    shade: np.ndarray  # (H, W) float32
    keypoints: np.ndarray  # (17, 3) float32 x, y, score


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
