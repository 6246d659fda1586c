"""The synthetic dataset writer: SYSU-MM01 and RegDB layouts of rendered persons with
ground-truth keypoints (`writer`), drawn by the renderer (`renderer`) from identities
(`identity`, `palette`), bodies (`body`, `person`, `accessories`), cameras and scenes."""
