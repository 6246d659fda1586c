"""Procedural renderer of the synthetic re-ID test bed: posed persons with known COCO-17 keypoints.

A person is a 3D body of the 17 COCO joints (plus head and neck volumes), posed by a walking
phase and a view angle, projected orthographically into the crop and rasterised with
anti-aliased capsules, ellipses and convex polygons into a *material map*. Materials are then
coloured per modality: identity colours under the camera's colour cast for visible cameras, a
thermal intensity for infrared ones. Identity therefore lives in

* modality-invariant structure: body proportions, clothing layout (sleeve/leg length, hem
  height, coat, skirt), garment pattern in body coordinates, carried objects, hair shape,
  glasses and beard; and
* modality-specific appearance: garment/skin/hair colours (visible) and garment insulation
  (infrared), so colour never transfers across modalities but shape and pattern do.

Body coordinates: x towards the person's left, y up from the soles, z forward (towards a camera
at yaw 0), in units of the person's stature. Image coordinates: x right, y down, in pixels with
integer values at pixel centres; keypoints use the same convention.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import cv2
import numpy as np

from ppa.synthetic.body import sample_placement
from ppa.synthetic.cameras import VIEW_JITTER, CameraProfile, Placement
from ppa.synthetic.identity import Identity
from ppa.synthetic.palette import GARMENT_COLOURS
from ppa.synthetic.person import rasterize_person
from ppa.synthetic.scene import CLUTTER_MAX, DOOR_COLOURS, HEAT, SHADOW_DARKNESS, _pick, _Scene

# Bump whenever the same arguments would render different pictures: the manifest records it, so
# scripts/make_synthetic.py can tell a dataset written by an older renderer.
RENDERER_VERSION = 2


# --- rendering --------------------------------------------------------------------------------
@dataclass
class RenderedImage:
    """One synthetic crop with its ground truth."""

    image: np.ndarray  # (H, W, 3) uint8 RGB for visible cameras, (H, W) uint8 for infrared
    keypoints: np.ndarray  # (17, 3) float32: x, y in pixels, score
    person_mask: np.ndarray  # (H, W) bool: where the person is drawn
    placement: Placement
    background: np.ndarray | None = None  # the same shot without the person (on request)


class SyntheticRenderer:
    """Renders identities into crops of one size; each camera scene is built once.

    Cameras with the same `scene_key` share one scene layout (RegDB's co-located pair);
    everything is seeded from `seed`, so a render depends only on its arguments.
    """

    def __init__(
        self,
        height: int,
        width: int,
        cameras: Mapping[int, CameraProfile],
        seed: int,
        scene_keys: Mapping[int, int] | None = None,
        *,
        view_jitter: float = VIEW_JITTER,
        clutter_max: int = CLUTTER_MAX,
    ):
        if height < 32 or width < 16:
            raise ValueError(f"image size {height}x{width} is too small (at least 32x16)")
        self.height, self.width = height, width
        self.cameras = dict(cameras)
        self.seed = seed
        self.scene_keys = dict(scene_keys) if scene_keys else {c: c for c in self.cameras}
        if view_jitter < 0 or clutter_max < 0:
            raise ValueError(
                f"view_jitter and clutter_max must be >= 0, got {view_jitter}, {clutter_max}"
            )
        self.view_jitter = float(view_jitter)
        self.clutter_max = int(clutter_max)
        self._scenes: dict[int, _Scene] = {}

    def camera(self, cam: int) -> CameraProfile:
        try:
            return self.cameras[cam]
        except KeyError:
            raise KeyError(f"no camera {cam} (have {sorted(self.cameras)})") from None

    def _scene(self, cam: int) -> _Scene:
        key = self.scene_keys[cam]
        if key not in self._scenes:
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, 0x5CE7E, key]))
            self._scenes[key] = _Scene(self.height, self.width, self.camera(cam).outdoor, rng)
        return self._scenes[key]

    def placement(self, identity: Identity, cam: int, rng: np.random.Generator) -> Placement:
        return sample_placement(
            identity, self.camera(cam), self.height, self.width, rng, self.view_jitter
        )

    def render(
        self,
        identity: Identity,
        cam: int,
        rng: np.random.Generator,
        placement: Placement | None = None,
        with_background: bool = False,
    ) -> RenderedImage:
        """Render `identity` as seen by camera `cam` (pose drawn from rng unless given)."""
        camera = self.camera(cam)
        if placement is None:
            placement = self.placement(identity, cam, rng)
        h, w = self.height, self.width
        scene = self._scene(cam)
        detail = np.random.default_rng(placement.detail_seed)
        col0 = int(placement.scene_x * (scene.width - w))
        look = scene.heat if camera.is_infrared else scene.rgb
        background = look[:, col0 : col0 + w].copy()
        for _ in range(int(detail.integers(self.clutter_max + 1))):
            self._clutter(background, detail, scene.ground_row, camera.is_infrared)
        occluder = None
        if detail.random() < camera.occluder_probability:
            c0 = int(detail.uniform(0.0, 0.85) * w)
            c1 = c0 + max(2, int(detail.uniform(0.08, 0.16) * w))
            r0 = 0 if detail.random() < 0.5 else int(detail.uniform(0.55, 0.8) * h)
            occluder = (c0, min(c1, w), r0, h)
            colour = _pick(detail, DOOR_COLOURS)
            background[r0:h, c0:c1] = HEAT["clutter"] if camera.is_infrared else colour

        light = camera.light_side * float(rng.uniform(0.6, 1.0))
        layers = rasterize_person(identity, placement, h, w, light, occluder)
        if not camera.is_infrared:
            self._shadow(background, placement)
        if camera.is_infrared:  # emissivity falls off less than reflected light at the rims
            person = identity.heat[layers.material] * (0.85 + 0.15 * layers.shade)
            alpha = layers.alpha
        else:
            person = identity.colours[layers.material] * layers.shade[..., None]
            alpha = layers.alpha[..., None]
        composite = background * (1.0 - alpha) + person * alpha

        finish_seed = int(rng.integers(2**63))
        image = self._finish(composite, camera, np.random.default_rng(finish_seed))
        bg_image = (
            self._finish(background, camera, np.random.default_rng(finish_seed))
            if with_background
            else None
        )
        return RenderedImage(image, layers.keypoints, layers.alpha > 0.5, placement, bg_image)

    def _clutter(
        self, image: np.ndarray, rng: np.random.Generator, ground_row: int, infrared: bool
    ) -> None:
        """A box, bin or sign standing on the ground somewhere in the crop.

        Both looks are drawn from `rng` either way, so co-located visible and thermal cameras
        given the same detail seed place the same objects.
        """
        h, w = self.height, self.width
        bw = rng.uniform(0.12, 0.35) * w
        bh = rng.uniform(0.08, 0.3) * h
        c0 = rng.uniform(-0.2, 1.0) * w
        bottom = rng.uniform(ground_row, h) if ground_row < h else h
        heat, colour = rng.uniform(0.2, 0.5), 0.8 * _pick(rng, GARMENT_COLOURS)
        r0, r1 = int(max(0, bottom - bh)), int(min(h, bottom))
        c0, c1 = int(max(0, c0)), int(min(w, c0 + bw))
        if r0 < r1 and c0 < c1:
            image[r0:r1, c0:c1] = heat if infrared else colour

    def _shadow(self, background: np.ndarray, placement: Placement) -> None:
        """Soft contact shadow under the feet."""
        s = placement.height_px
        rx, ry = 0.2 * s, 0.035 * s
        dist = ((self._canvas_x() - placement.center_x) / rx) ** 2 + (
            (self._canvas_y() - placement.foot_y) / ry
        ) ** 2
        shadow = SHADOW_DARKNESS * np.clip(1.0 - dist, 0.0, 1.0)
        background *= (1.0 - shadow)[..., None]

    def _canvas_x(self) -> np.ndarray:
        return np.arange(self.width, dtype=np.float32)[None, :]

    def _canvas_y(self) -> np.ndarray:
        return np.arange(self.height, dtype=np.float32)[:, None]

    def _finish(
        self, linear: np.ndarray, camera: CameraProfile, rng: np.random.Generator
    ) -> np.ndarray:
        """Camera pipeline: exposure/colour cast or thermal gain, blur, noise, 8-bit."""
        h = self.height
        if camera.is_infrared:
            lo, hi = camera.thermal_range
            lo += float(rng.normal(0.0, 0.03))  # automatic gain control drifts per shot
            hi += float(rng.normal(0.0, 0.03))
            img = (linear - lo) / max(hi - lo, 1e-3)
        else:
            cast = np.asarray(camera.colour_gain, np.float32) * (
                1.0 + rng.normal(0.0, 0.025, 3).astype(np.float32)
            )
            exposure = camera.brightness * float(rng.uniform(0.88, 1.12))
            img = np.clip(linear * cast * exposure, 0.0, 1.0) ** camera.gamma
        sigma = camera.blur * h * float(rng.uniform(0.7, 1.3))
        img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), sigmaX=sigma, sigmaY=sigma)
        img = img + rng.normal(0.0, camera.noise, img.shape).astype(np.float32)
        if camera.is_infrared:  # fixed-pattern column noise of the microbolometer
            columns = np.random.default_rng([self.seed, camera.cam]).normal(
                0.0, camera.noise * 0.5, img.shape[1]
            )
            img = img + columns[None, :].astype(np.float32)
        return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
