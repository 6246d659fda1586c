"""Keypoints: the COCO-17 convention, keypoint backends and keypoint -> mask/heatmap maps."""
