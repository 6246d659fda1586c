"""The ``mmpose`` backend: RTMPose top-down, the person box being the whole crop.

The model config is one of those shipped inside the mmpose wheel (``.mim/configs``) or a file
path; the checkpoint is a path or a URL (downloaded once, SHA-256 checked; see checkpoint.py).

We drive mmpose's model and test pipeline directly instead of ``mmpose.apis``:
``inference_topdown`` runs one image at a time, while here one forward pass takes the whole
batch of crops; and ``mmpose.apis`` imports the visualiser, which needs torchvision, which the
pose environment does not install (see docs/pose.md).
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ppa.config import resolve_path
from ppa.keypoint_extraction.base import (
    PoseBackend,
    PoseBackendError,
    PoseBackendUnavailableError,
    resolve_device,
)
from ppa.keypoint_extraction.checkpoint import fetch_checkpoint
from ppa.keypoint_extraction.mmcv_ops_shim import install_mmcv_ops_shim
from ppa.pose.coco import KEYPOINT_NAMES, NUM_KEYPOINTS

logger = logging.getLogger(__name__)

BBOX_POLICIES = ("whole_crop",)
# mmpose's own COCO metainfo (flip pairs, sigmas), inside its bundled configs.
COCO_METAINFO = Path("_base_") / "datasets" / "coco.py"


def _import_mmpose() -> dict[str, Any]:
    """Import the mmpose stack lazily (the training environment does not have it)."""
    # Deprecation notices from inside OpenMMLab code (torch.cuda.amp.autocast, ...): nothing a
    # user of this backend can act on.
    for module in ("mmdet", "mmengine", "mmpose", "mmcv"):
        warnings.filterwarnings("ignore", category=FutureWarning, module=module)
    try:
        install_mmcv_ops_shim()
        import mmpose
        import torch
        from mmengine.config import Config
        from mmengine.dataset import Compose, pseudo_collate
        from mmengine.model.utils import revert_sync_batchnorm
        from mmengine.registry import init_default_scope
        from mmengine.runner.checkpoint import load_state_dict
        from mmpose.datasets.datasets.utils import parse_pose_metainfo
        from mmpose.models import build_pose_estimator
    except ImportError as err:
        raise PoseBackendUnavailableError(
            "mmpose", getattr(err, "name", None) or "mmpose", err
        ) from err
    return {
        "mmpose": mmpose,
        "torch": torch,
        "Config": Config,
        "Compose": Compose,
        "pseudo_collate": pseudo_collate,
        "revert_sync_batchnorm": revert_sync_batchnorm,
        "init_default_scope": init_default_scope,
        "load_state_dict": load_state_dict,
        "parse_pose_metainfo": parse_pose_metainfo,
        "build_pose_estimator": build_pose_estimator,
    }


def _numpy_safe_globals() -> list[Any]:
    """What a weights-only ``torch.load`` must accept for numpy arrays in checkpoint metadata
    (OpenMMLab stores ``dataset_meta`` with numpy arrays); object arrays stay refused."""
    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct, scalar
    dtype_classes = [
        getattr(np.dtypes, name)
        for name in dir(np.dtypes)
        if name.endswith("DType") and name != "ObjectDType"
    ]
    return [_reconstruct, scalar, np.ndarray, np.dtype, *dtype_classes]


def read_checkpoint(torch: Any, path: Path, *, trust: bool) -> dict[str, Any]:
    """Load a checkpoint file on the CPU.

    By default only tensors, containers and numpy arrays are unpickled (``weights_only``), so
    a tampered file cannot run code; ``trust=True`` unpickles everything.
    """
    if trust:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    else:
        try:
            with torch.serialization.safe_globals(_numpy_safe_globals()):
                checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            refused = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
            raise PoseBackendError(
                f"checkpoint {path} holds Python objects a weights-only load refuses "
                f"({', '.join(refused) or err}); if the file comes from a source you trust, "
                "set pose_backend.trust_checkpoint=true"
            ) from err
    if not isinstance(checkpoint, dict):
        raise PoseBackendError(
            f"checkpoint {path} holds a {type(checkpoint).__name__}, "
            "expected a dict (a state_dict or {'state_dict': ..., 'meta': ...})"
        )
    return checkpoint


def resolve_model_config(config: str, mmpose_dir: Path) -> Path:
    """A config given as an existing path, else relative to mmpose's bundled ``.mim/configs``."""
    direct = resolve_path(config)
    if direct.is_file():
        return direct
    bundled = mmpose_dir / ".mim" / "configs" / config
    if bundled.is_file():
        return bundled
    raise FileNotFoundError(
        f"pose_backend.config={config!r}: neither {direct} nor {bundled} exists"
    )


def _check_coco17(meta: dict[str, Any], origin: str) -> None:
    names = tuple(meta.get("keypoint_id2name", {}).get(i) for i in range(NUM_KEYPOINTS))
    if meta.get("num_keypoints") != NUM_KEYPOINTS or names != KEYPOINT_NAMES:
        raise PoseBackendError(
            f"{origin} describes {meta.get('num_keypoints')} keypoints {names}; the project "
            f"needs COCO-17 in the order {KEYPOINT_NAMES}"
        )


class MMPoseBackend(PoseBackend):
    """RTMPose (or any mmpose top-down COCO-17 model) on batches of person crops."""

    name: ClassVar[str] = "mmpose"

    def __init__(
        self,
        *,
        config: str,
        checkpoint: str | None,
        checkpoint_dir: str | os.PathLike = "data/pose-models",
        checkpoint_sha256: str | None = None,
        device: str = "auto",
        flip_test: bool = True,
        bbox: str = "whole_crop",
        trust_checkpoint: bool = False,
        allow_random_weights: bool = False,
    ):
        if bbox not in BBOX_POLICIES:
            raise ValueError(
                f"pose_backend.bbox={bbox!r}: expected one of {BBOX_POLICIES} (crops are "
                "person detections; the whole crop is the box)"
            )
        if not checkpoint and not allow_random_weights:
            raise PoseBackendError(
                "pose_backend.checkpoint is null: RTMPose needs trained weights (set a path or "
                "URL; see docs/pose.md), or use pose_backend=mediapipe"
            )
        # Fetch first: a failed download should not wait for the model build.
        local = (
            fetch_checkpoint(
                str(checkpoint), resolve_path(checkpoint_dir), sha256=checkpoint_sha256
            )
            if checkpoint
            else None
        )
        lib = _import_mmpose()
        self._torch = lib["torch"]
        self._pseudo_collate = lib["pseudo_collate"]
        self.device = resolve_device(device)
        mmpose_dir = Path(lib["mmpose"].__file__).parent
        config_path = resolve_model_config(config, mmpose_dir)
        cfg = lib["Config"].fromfile(str(config_path))
        # Inference only: no training targets, and no ImageNet backbone download.
        cfg.model.train_cfg = None
        if "init_cfg" in cfg.model.get("backbone", {}):
            cfg.model.backbone.init_cfg = None
        cfg.model.setdefault("test_cfg", {})["flip_test"] = bool(flip_test)
        lib["init_default_scope"](cfg.get("default_scope", "mmpose"))
        model = lib["revert_sync_batchnorm"](lib["build_pose_estimator"](cfg.model))

        meta = None
        if local is not None:
            ckpt = read_checkpoint(self._torch, local, trust=trust_checkpoint)
            state = ckpt.get("state_dict", ckpt)
            # Weights saved from a (Distributed)DataParallel wrapper carry a `module.` prefix.
            state = {re.sub(r"^module\.", "", key): value for key, value in state.items()}
            # strict: a checkpoint that does not fit the config must fail, not run half-random.
            try:
                lib["load_state_dict"](model, state, strict=True, logger="silent")
            except RuntimeError as err:
                raise PoseBackendError(
                    f"checkpoint {local} does not fit {config_path.name}: {err}"
                ) from err
            meta = (ckpt.get("meta") or {}).get("dataset_meta")
            weights = local.name
        else:
            logger.warning(
                "mmpose backend with RANDOM WEIGHTS: keypoints are meaningless; "
                "this only exercises the pipeline"
            )
            weights = "random-weights"
        if meta is None:
            coco_meta = mmpose_dir / ".mim" / "configs" / COCO_METAINFO
            meta = lib["parse_pose_metainfo"]({"from_file": str(coco_meta)})
        _check_coco17(meta, f"model {config_path.name} / weights {weights}")
        model.dataset_meta = meta
        self._meta = meta
        self._model = model.to(self.device).eval()
        self._pipeline = lib["Compose"](cfg.test_dataloader.dataset.pipeline)
        self._source = f"mmpose:{config_path.stem}:{weights}"
        logger.info("mmpose backend: %s on %s", self._source, self.device)

    @property
    def source(self) -> str:
        return self._source

    @property
    def model(self) -> Any:
        """The mmpose estimator (a torch module, ``dataset_meta`` attached), e.g. to export it."""
        if self._model is None:
            raise PoseBackendError("the mmpose backend was closed")
        return self._model

    def _predict(self, images: Sequence[np.ndarray], keys: Sequence[str] | None) -> np.ndarray:
        if self._model is None:
            raise PoseBackendError("the mmpose backend was closed")
        samples = []
        for image in images:
            height, width = image.shape[:2]
            info = {
                # mmpose models expect OpenCV's BGR order (their preprocessor flips to RGB).
                "img": np.ascontiguousarray(image[:, :, ::-1]),
                "bbox": np.array([[0.0, 0.0, width, height]], dtype=np.float32),
                "bbox_score": np.ones(1, dtype=np.float32),
            }
            info.update(self._meta)
            samples.append(self._pipeline(info))
        batch = self._pseudo_collate(samples)
        with self._torch.inference_mode():
            results = self._model.test_step(batch)
        out = np.zeros((len(images), NUM_KEYPOINTS, 3), dtype=np.float32)
        for i, result in enumerate(results):
            pred = result.pred_instances
            out[i, :, :2] = np.asarray(pred.keypoints)[0]
            # SimCC confidences are not probabilities and can exceed 1.
            out[i, :, 2] = np.clip(np.asarray(pred.keypoint_scores)[0], 0.0, 1.0)
        return out

    def close(self) -> None:
        if self._model is not None:
            self._model = None
            if self.device.startswith("cuda"):
                self._torch.cuda.empty_cache()
