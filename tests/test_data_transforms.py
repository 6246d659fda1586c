"""ReidTransform and normalize on hand-computed cases: pixels and keypoints move together."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ppa.data.transforms import (
    ReidTransform,
    build_eval_transform,
    build_train_transform,
    normalize,
)
from ppa.pose.coco import INDEX

LS, RS, NOSE = INDEX["left_shoulder"], INDEX["right_shoulder"], INDEX["nose"]


def keypoints(**joints):
    points = np.zeros((17, 3), dtype=np.float32)
    for name, (x, y, score) in joints.items():
        points[INDEX[name]] = (x, y, score)
    return points


def marker_image(height, width, y, x):
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[y, x] = (255, 0, 0)
    return image


def crop_draws(seed, pad):
    """(top, left) the transform draws first from default_rng(seed), in that order."""
    twin = np.random.default_rng(seed)
    return int(twin.integers(0, 2 * pad + 1)), int(twin.integers(0, 2 * pad + 1))


def test_eval_resize_maps_keypoints_with_pixel_centres():
    image = np.full((8, 4, 3), 51, dtype=np.uint8)
    out, points = ReidTransform(16, 8)(image, keypoints(nose=(1, 3, 0.7), left_hip=(3.5, 7.4, 1)))
    assert out.dtype == torch.float32 and out.shape == (3, 16, 8)
    torch.testing.assert_close(out, torch.full((3, 16, 8), 0.2))
    # x' = (x + 0.5) * 2 - 0.5
    assert points[NOSE].tolist() == pytest.approx([2.5, 6.5, 0.7])
    # x' = 7.5 = W - 0.5: the right edge of the last pixel is still inside.
    assert points[INDEX["left_hip"]].tolist() == pytest.approx([7.5, 15.3, 1.0])


def test_flip_mirrors_pixels_and_swaps_left_right_joints():
    image = marker_image(10, 6, y=4, x=1)
    points = keypoints(left_shoulder=(1, 4, 0.9), right_shoulder=(4, 4, 0.8), nose=(2, 1, 1.0))
    out, moved = ReidTransform(10, 6, flip=1.0)(image, points, np.random.default_rng(0))
    assert out[0, 4, 4] == 1.0 and out[0].sum() == 1.0  # x = W - 1 - 1 = 4
    # The joint called "left shoulder" after the flip is the old right one, mirrored.
    assert moved[LS].tolist() == pytest.approx([5 - 4, 4, 0.8])
    assert moved[RS].tolist() == pytest.approx([5 - 1, 4, 0.9])
    assert moved[NOSE].tolist() == pytest.approx([3, 1, 1.0])


def test_pad_and_crop_shift_pixels_and_keypoints_and_zero_the_border():
    seed = 8
    top, left = crop_draws(seed, pad=2)
    assert (top, left) == (3, 1)  # content moves up 1 (2 - 3) and right 1 (2 - 1)
    image = np.full((10, 6, 3), 255, dtype=np.uint8)
    image[4, 1] = 0
    transform = ReidTransform(10, 6, pad=2)
    out, moved = transform(
        image, keypoints(nose=(1, 4, 1.0), left_eye=(2, 0, 0.9)), np.random.default_rng(seed)
    )
    # out[y, x] = image[y + 1, x - 1]; the bottom row and left column come from the padding.
    expected = torch.zeros(10, 6)
    expected[0:9, 1:6] = 1.0
    expected[3, 2] = 0.0  # the dark pixel (4, 1) -> (3, 2)
    for channel in range(3):
        torch.testing.assert_close(out[channel], expected)
    assert moved[NOSE].tolist() == pytest.approx([2, 3, 1.0])
    # y = 0 - 1 = -1 < -0.5: the joint left the image, its score drops to 0.
    assert moved[INDEX["left_eye"]].tolist() == pytest.approx([3, -1, 0.0])


def test_crop_equals_pad_then_crop_even_with_a_pad_larger_than_the_image():
    image = np.random.default_rng(1).integers(1, 256, (4, 3, 3), dtype=np.uint8)
    transform = ReidTransform(4, 3, pad=5)
    padded = np.pad(image, ((5, 5), (5, 5), (0, 0)))
    for seed in range(25):
        top, left = crop_draws(seed, pad=5)
        out, _ = transform(image, keypoints(), np.random.default_rng(seed))
        expected = torch.from_numpy(padded[top : top + 4, left : left + 3].transpose(2, 0, 1))
        torch.testing.assert_close(out, expected.float() / 255)


def test_resize_pad_crop_and_flip_compose():
    seed = 14
    top, left = crop_draws(seed, pad=2)
    assert (top, left) == (0, 4)  # content moves down 2 and left 2
    twin = np.random.default_rng(seed)
    twin.integers(0, 5), twin.integers(0, 5)
    assert twin.random() < 0.5  # this seed also flips
    points = keypoints(left_wrist=(9, 7, 0.9), right_wrist=(1, 7, 0.6), nose=(11.6, 0, 1.0))
    out, moved = ReidTransform(10, 6, pad=2, flip=0.5)(
        np.zeros((20, 12, 3), dtype=np.uint8), points, np.random.default_rng(seed)
    )
    assert out.shape == (3, 10, 6)

    # resize x' = (x + 0.5) / 2 - 0.5; crop x' - 2, y' + 2; flip x'' = 5 - x'.
    # Old left wrist (9, 7): (4.25, 3.25) -> (2.25, 5.25) -> (2.75, 5.25), now "right wrist".
    assert moved[INDEX["right_wrist"]].tolist() == pytest.approx([2.75, 5.25, 0.9])
    # Old right wrist (1, 7): (0.25, 3.25) -> (-1.75, 5.25) -> (6.75, 5.25): outside, score 0.
    assert moved[INDEX["left_wrist"]].tolist() == pytest.approx([6.75, 5.25, 0.0])
    # Nose (11.6, 0): (5.55, -0.25) -> (3.55, 1.75) -> (1.45, 1.75).
    assert moved[NOSE].tolist() == pytest.approx([1.45, 1.75, 1.0])


def test_random_transform_is_a_function_of_the_seed():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (12, 6, 3), dtype=np.uint8)
    points = keypoints(nose=(3, 3, 1.0))
    transform = ReidTransform(12, 6, pad=3, flip=0.5)
    runs = [transform(image, points, np.random.default_rng(seed)) for seed in (5, 5, 6, 7, 8)]
    torch.testing.assert_close(runs[0][0], runs[1][0])
    torch.testing.assert_close(runs[0][1], runs[1][1])
    assert any(not torch.equal(runs[0][0], other[0]) for other in runs[2:])
    with pytest.raises(ValueError, match="needs an rng"):
        transform(image, points)


def test_builders_read_the_config_keys():
    class Node:
        def __init__(self, **values):
            self.__dict__.update(values)

    train = build_train_transform(Node(height=32, width=16), Node(pad=4, flip=0.25))
    assert train == ReidTransform(32, 16, pad=4, flip=0.25) and train.is_random
    evaluation = build_eval_transform(Node(height=32, width=16))
    assert evaluation == ReidTransform(32, 16) and not evaluation.is_random


def test_input_validation():
    with pytest.raises(ValueError, match="uint8"):
        ReidTransform(4, 4)(np.zeros((4, 4), dtype=np.uint8), keypoints())
    with pytest.raises(ValueError, match="17, 3"):
        ReidTransform(4, 4)(np.zeros((4, 4, 3), dtype=np.uint8), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="flip"):
        ReidTransform(4, 4, flip=1.5)
    with pytest.raises(ValueError, match="pad"):
        ReidTransform(4, 4, pad=-1)


def test_normalize_per_channel():
    images = torch.full((2, 3, 2, 2), 0.5)
    out = normalize(images, mean=[0.5, 0.25, 0.0], std=[0.5, 0.25, 1.0])
    assert out.shape == images.shape
    torch.testing.assert_close(out[1, :, 0, 0], torch.tensor([0.0, 1.0, 0.5]))
    half = normalize(images.half(), [0.5, 0.5, 0.5], [0.5, 0.5, 0.5])
    assert half.dtype == torch.float16
    with pytest.raises(ValueError, match="B, 3, H, W"):
        normalize(images[0], [0.5] * 3, [0.5] * 3)
    with pytest.raises(ValueError, match="positive"):
        normalize(images, [0.5] * 3, [0.5, 0.0, 0.5])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_normalize_on_cuda():
    images = torch.full((1, 3, 2, 2), 0.5, device="cuda")
    out = normalize(images, [0.5, 0.25, 0.0], [0.5, 0.25, 1.0])
    assert out.device.type == "cuda"
    torch.testing.assert_close(out[0, :, 1, 1].cpu(), torch.tensor([0.0, 1.0, 0.5]))


def test_grayscale_replaces_colour_by_luma_and_keeps_keypoints():
    image = np.zeros((4, 2, 3), np.uint8)
    image[..., 0] = 200  # pure red: luma 0.299 * 200 = 59.8 -> 60
    points = keypoints(nose=(1, 2, 1.0))
    out, moved = ReidTransform(4, 2, grayscale=1.0)(image, points, np.random.default_rng(0))
    assert torch.all(out == 60 / 255)
    np.testing.assert_allclose(moved.numpy(), points)
    kept, _ = ReidTransform(4, 2, grayscale=0.0)(image, points)
    assert kept[0].max() == pytest.approx(200 / 255) and kept[1].max() == 0
    # Half of the draws turn grey, reproducibly per seed.
    grey = [
        bool(
            ReidTransform(4, 2, grayscale=0.5)(image, points, np.random.default_rng(s))[0][1].max()
            > 0
        )
        for s in range(40)
    ]
    assert 10 < sum(grey) < 30
    with pytest.raises(ValueError, match="grayscale"):
        ReidTransform(4, 2, grayscale=1.5)
