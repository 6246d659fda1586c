#!/usr/bin/env bash
# Build or update the pose environment: bash scripts/install_pose_env.sh [VENV] (default
# .venv-pose; `make pose-setup` calls it). Idempotent: a rerun installs nothing new.
#
# Why a separate environment: mediapipe and mmpose need protobuf<5, Flower needs >=5.28. The
# training environment only reads the keypoint cache; this one writes it (docs/pose.md).
# Every pip call goes through constraints-pose.txt. The OpenMMLab packages and mediapipe go in
# with --no-deps: what they declare would add a second OpenCV, jax/jaxlib, sounddevice,
# torchvision and chumpy, none of which the backends use.
set -euo pipefail

VENV="${1:-.venv-pose}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONSTRAINTS="$ROOT/constraints-pose.txt"
PYTHON="${PYTHON:-python3}"

if [[ ! -x "$VENV/bin/python" ]]; then
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"

pip_install() {
    "$PY" -m pip install --disable-pip-version-check -q -c "$CONSTRAINTS" "$@"
}

echo "pose env: $VENV (constraints: $CONSTRAINTS)"
# 1. Everything that installs with its own dependencies (all pinned by the constraints).
pip_install setuptools cython numpy torch opencv-python-headless pillow protobuf \
    absl-py attrs flatbuffers pycocotools shapely terminaltables six json-tricks munkres \
    addict pyyaml rich termcolor yapf platformdirs scipy matplotlib scikit-image \
    hydra-core omegaconf tqdm
# 2. The pose libraries themselves, without their declared dependencies (see above).
echo "(pip may list mmpose's chumpy/opencv-python/torchvision as missing: left out on purpose)"
pip_install --no-deps mediapipe mmengine mmcv-lite mmpose mmdet
# 3. xtcocotools has no wheel built against numpy 2: compile it (~10 s) against the numpy above.
pip_install --no-build-isolation --no-binary xtcocotools xtcocotools

# 4. Make this checkout's `ppa` package importable without installing the project (its
#    dependencies are the training stack: torch 2.14, Flower, ...). Rewritten on every run, so
#    a moved checkout is picked up by rerunning this script.
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
printf '%s\n' "$ROOT" > "$SITE/ppa-checkout.pth"

# 5. Smoke check: the libraries, the bundled MediaPipe model, the mmcv-lite shim, and ppa.
"$PY" - <<'PYEOF'
import importlib.util
from pathlib import Path

import google.protobuf
import mediapipe
import hydra  # noqa: F401

from ppa.keypoint_extraction.mmcv_ops_shim import install_mmcv_ops_shim

install_mmcv_ops_shim()
import mmpose.models  # noqa: E402,F401

bundled = Path(mediapipe.__file__).parent / "modules/pose_landmark/pose_landmark_full.tflite"
assert bundled.is_file(), f"mediapipe wheel lacks {bundled}"
assert importlib.util.find_spec("ppa.keypoint_extraction") is not None
print(f"pose env ok: mediapipe {mediapipe.__version__}, mmpose {mmpose.__version__}, "
      f"protobuf {google.protobuf.__version__}")
PYEOF
