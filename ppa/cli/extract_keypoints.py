"""Write the keypoint cache of a dataset root with a pose backend (Hydra entry point).

    .venv-pose/bin/python -m ppa.cli.extract_keypoints dataset=sysu pose_backend=mmpose
    .venv-pose/bin/python -m ppa.cli.extract_keypoints pose_backend=mediapipe
    ppa-extract-keypoints pose_backend=file pose_backend.path=kp.json

mmpose and mediapipe run in the pose environment (`make pose-setup`: their protobuf<5 conflicts
with Flower's); `file` runs in either. The cache is `<dataset.root>/<dataset.keypoints>`, written
atomically every `pose_backend.checkpoint_every` images; a rerun skips images already in it. A
report (`keypoints.report.json`) next to the cache gives per-camera detection rates and mean
confidences and lists the images with no confident person.
"""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from ppa.config import CONFIG_DIR, resolve_path
from ppa.keypoint_extraction import create_backend
from ppa.keypoint_extraction.extraction import ExtractionSettings, extract_keypoints

logger = logging.getLogger("extract_keypoints")


@hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    if "pose_backend" not in cfg:
        raise ValueError("no pose_backend config: select one, e.g. pose_backend=mediapipe")
    backend_cfg = cfg.pose_backend
    root = resolve_path(cfg.dataset.root)
    cache_file = root / str(cfg.dataset.keypoints)
    settings = ExtractionSettings(
        batch_size=int(backend_cfg.batch_size),
        checkpoint_every=int(backend_cfg.checkpoint_every),
        resume=bool(backend_cfg.resume),
        min_confidence=float(backend_cfg.min_confidence),
        min_joints=int(backend_cfg.min_joints),
        on_bad_image=str(cfg.dataset.get("on_bad_image", "error")),
    )
    with create_backend(backend_cfg) as backend:
        extract_keypoints(backend, root, cache_file, settings)


if __name__ == "__main__":
    main()
