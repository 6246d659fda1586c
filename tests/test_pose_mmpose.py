"""The mmpose (RTMPose) backend in the pose venv.

PIPELINE TEST WITH RANDOM WEIGHTS: the trained RTMPose checkpoint cannot be downloaded here, so
the keypoints below are meaningless as poses. What is checked is everything around the model:
it builds from the config shipped in the mmpose wheel under mmcv-lite (through the mmcv.ops
shim), batches crops of different sizes and modalities, maps SimCC outputs back to crop pixels
through the top-down affine, loads a checkpoint from a URL (real HTTP on loopback) with its
SHA-256 checked, and rejects checkpoints that do not fit.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
POSE_PYTHON = REPO / ".venv-pose" / "bin" / "python"

PROBE = r"""
import hashlib, http.server, json, sys, threading
from functools import partial
from pathlib import Path

import numpy as np
import torch

from ppa.keypoint_extraction import PoseBackendError, create_backend

work = Path(sys.argv[1])
base = {"name": "mmpose", "device": "cpu", "checkpoint_dir": str(work / "models"),
        "config": "body_2d_keypoint/rtmpose/coco/rtmpose-m_8xb256-420e_aic-coco-256x192.py"}
rng = np.random.default_rng(0)
grey = rng.integers(0, 256, (96, 96), dtype=np.uint8)
images = [rng.integers(0, 256, (128, 64, 3), dtype=np.uint8),
          np.repeat(grey[:, :, None], 3, axis=2),  # an IR crop: three equal channels
          rng.integers(0, 256, (200, 80, 3), dtype=np.uint8)]
out = {}

torch.manual_seed(0)
first = create_backend({**base, "checkpoint": None, "allow_random_weights": True})
batch = first.predict(images)
out["source"] = first.source
out["dtype"] = str(batch.dtype)
out["batch"] = batch.tolist()
out["single"] = np.concatenate([first.predict([im]) for im in images]).tolist()

serve = work / "serve"
serve.mkdir()
ckpt = serve / "rtmpose-random.pth"
model = first.model
torch.save({"state_dict": model.state_dict(), "meta": {"dataset_meta": model.dataset_meta}}, ckpt)
sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()
handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(serve))
handler.log_message = lambda *args: None
httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
threading.Thread(target=httpd.serve_forever, daemon=True).start()
url = f"http://127.0.0.1:{httpd.server_address[1]}/rtmpose-random.pth"

torch.manual_seed(1)  # a different random init: equal outputs can only come from the file
loaded = create_backend({**base, "checkpoint": url, "checkpoint_sha256": sha[:8]})
out["loaded_source"] = loaded.source
out["loaded"] = loaded.predict(images).tolist()
out["downloaded"] = sorted(p.name for p in (work / "models").iterdir())
httpd.shutdown()

torch.manual_seed(1)
other = create_backend({**base, "checkpoint": None, "allow_random_weights": True})
out["other"] = other.predict(images).tolist()

state = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
torch.save({"state_dict": state}, work / "headless.pth")
try:
    create_backend({**base, "checkpoint": str(work / "headless.pth")})
    out["headless_error"] = None
except Exception as err:
    out["headless_error"] = f"{type(err).__name__}: {err}"
import fractions
full = {"state_dict": model.state_dict(), "meta": {"note": fractions.Fraction(1, 3)}}
torch.save(full, work / "pickled.pth")
try:
    create_backend({**base, "checkpoint": str(work / "pickled.pth")})
    out["untrusted_error"] = None
except PoseBackendError as err:
    out["untrusted_error"] = str(err)
trusted = create_backend({**base, "checkpoint": str(work / "pickled.pth"),
                          "trust_checkpoint": True})
out["trusted"] = trusted.predict(images[:1]).tolist()
try:
    create_backend({**base, "checkpoint": None})
    out["no_weights_error"] = None
except PoseBackendError as err:
    out["no_weights_error"] = str(err)

import mmcv.ops
from mmcv.ops.nms import batched_nms
from ppa.keypoint_extraction.mmcv_ops_shim import MmcvOpsUnavailableError, mmcv_has_compiled_ops
out["compiled_ops"] = mmcv_has_compiled_ops()
out["shim_errors"] = []
for op in (lambda: mmcv.ops.nms(None, None, 0.5), lambda: batched_nms(None, None, None, {})):
    try:
        op()
    except MmcvOpsUnavailableError as err:
        out["shim_errors"].append(str(err))
print("PROBE-JSON " + json.dumps(out))
"""


def pose_python() -> Path:
    if not POSE_PYTHON.is_file():
        pytest.fail(
            f"{POSE_PYTHON} is missing: run `make pose-setup` (`make test` does it "
            "first) to build the pose environment",
            pytrace=False,
        )
    return POSE_PYTHON


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("mmpose")
    proc = subprocess.run(
        [str(pose_python()), "-c", PROBE, str(work)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("PROBE-JSON "))
    return json.loads(line[len("PROBE-JSON ") :])


# The top-down affine window of each crop, by hand: box = whole crop (w, h), centre (w/2, h/2),
# padded x1.25, then widened/heightened to RTMPose's 192:256 aspect (0.75). SimCC bins cover
# exactly this window, so every decoded keypoint lies inside it.
#   128x64:  1.25 * (64, 128) = (80, 160); 80 < 0.75*160 -> w = 120: x in [-28, 92], y in [-16, 144]
#   96x96:   (120, 120); 120 > 0.75*120 -> h = 160: x in [-12, 108], y in [-32, 128]
#   200x80:  (100, 250); w = 187.5: x in [-53.75, 133.75], y in [-25, 225]
WINDOWS = [
    (-28.0, 92.0, -16.0, 144.0),
    (-12.0, 108.0, -32.0, 128.0),
    (-53.75, 133.75, -25.0, 225.0),
]


@pytest.mark.slow
def test_rtmpose_builds_and_returns_well_formed_keypoints(probe: dict):
    batch = np.asarray(probe["batch"])
    assert probe["dtype"] == "float32"
    assert batch.shape == (3, 17, 3)
    assert np.isfinite(batch).all()
    assert ((batch[:, :, 2] >= 0) & (batch[:, :, 2] <= 1)).all()
    for kp, (x0, x1, y0, y1) in zip(batch, WINDOWS, strict=True):
        assert (kp[:, 0] >= x0).all() and (kp[:, 0] <= x1).all(), kp[:, 0]
        assert (kp[:, 1] >= y0).all() and (kp[:, 1] <= y1).all(), kp[:, 1]
    assert probe["source"] == "mmpose:rtmpose-m_8xb256-420e_aic-coco-256x192:random-weights"


@pytest.mark.slow
def test_batched_prediction_equals_one_by_one(probe: dict):
    np.testing.assert_allclose(probe["batch"], probe["single"], atol=1e-4)


@pytest.mark.slow
def test_checkpoint_from_url_is_downloaded_verified_and_loaded(probe: dict):
    assert probe["downloaded"] == ["rtmpose-random.pth"]
    assert probe["loaded_source"].endswith(":rtmpose-random.pth")
    np.testing.assert_allclose(probe["loaded"], probe["batch"], atol=1e-5)
    # Without the checkpoint, the second seed gives other outputs: the equality above is real.
    assert not np.allclose(probe["other"], probe["batch"], atol=1e-3)


@pytest.mark.slow
def test_unfit_or_missing_weights_are_refused(probe: dict):
    assert probe["headless_error"].startswith("PoseBackendError: checkpoint ")
    assert "does not fit rtmpose-m_8xb256-420e_aic-coco-256x192.py" in probe["headless_error"]
    assert "missing keys" in probe["headless_error"]
    assert "pose_backend.checkpoint is null" in probe["no_weights_error"]
    assert "pose_backend=mediapipe" in probe["no_weights_error"]


@pytest.mark.slow
def test_checkpoints_with_arbitrary_objects_need_explicit_trust(probe: dict):
    assert "fractions.Fraction" in probe["untrusted_error"]
    assert "pose_backend.trust_checkpoint=true" in probe["untrusted_error"]
    np.testing.assert_allclose(probe["trusted"], probe["batch"][:1], atol=1e-5)


@pytest.mark.slow
def test_mmcv_lite_ops_are_placeholders_that_fail_loudly(probe: dict):
    assert probe["compiled_ops"] is False
    assert len(probe["shim_errors"]) == 2
    assert "mmcv.ops.nms" in probe["shim_errors"][0]
    assert "mmcv.ops.nms.batched_nms" in probe["shim_errors"][1]
    assert all("mmcv-lite" in msg for msg in probe["shim_errors"])
