"""What the configuration offers a user: the choices of a group are real choices."""

from __future__ import annotations

from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from ppa.config import CONFIG_DIR, load_config


def group_options(group: str) -> list[str]:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return sorted(GlobalHydra.instance().config_loader().get_group_options(group))


def test_pose_backend_choices_are_backends_only() -> None:
    assert group_options("pose_backend") == ["file", "mediapipe", "mmpose"]
    # The shared extraction settings still reach every backend.
    for backend in ("file", "mediapipe", "mmpose"):
        cfg = load_config([f"pose_backend={backend}"])
        assert cfg.pose_backend.name == backend
        assert cfg.pose_backend.min_joints == 5 and cfg.pose_backend.resume is True
