"""Named sets of COCO-17 joints (``ppa.kpr_joints``: which joints L_kpr pools)."""

from __future__ import annotations

from collections.abc import Sequence

from ppa.pose.coco import HEAD_JOINTS, INDEX, NUM_KEYPOINTS

ALL_JOINTS: tuple[int, ...] = tuple(range(NUM_KEYPOINTS))
# Shoulders to ankles. The head joints are left out of L_kpr by default: the head is
# anonymised at full strength on purpose, and pulling its pooled features toward the raw
# head's would work against that.
BODY_JOINTS: tuple[int, ...] = tuple(i for i in ALL_JOINTS if i not in HEAD_JOINTS)
JOINT_SETS: dict[str, tuple[int, ...]] = {"all": ALL_JOINTS, "body": BODY_JOINTS}


def joint_indices(spec: str | Sequence[str]) -> tuple[int, ...]:
    """``all`` | ``body`` | a list of COCO joint names -> sorted joint indices."""
    if isinstance(spec, str):
        if spec not in JOINT_SETS:
            raise ValueError(
                f"ppa.kpr_joints must be one of {sorted(JOINT_SETS)} or a list of COCO joint "
                f"names, got {spec!r}"
            )
        return JOINT_SETS[spec]
    unknown = [name for name in spec if name not in INDEX]
    if unknown or not spec:
        raise ValueError(f"ppa.kpr_joints: unknown or no COCO joint names {unknown or list(spec)}")
    return tuple(sorted({INDEX[name] for name in spec}))
