"""The command lines of the project, installed as console scripts ([project.scripts] in
pyproject.toml); each module is a thin entry point over the library:

- ``ppa-train`` (train), ``ppa-evaluate`` (evaluate), ``ppa-privacy-report`` (privacy_report),
  ``ppa-ablation`` (ablation): centralised training, evaluation and reports (Hydra);
- ``ppa-privacy-curve`` (privacy_curve): the privacy-utility curve, one federated DP
  simulation per epsilon and seed (Hydra);
- ``ppa-make-synthetic`` (make_synthetic), ``ppa-extract-keypoints`` (extract_keypoints):
  the data and its keypoint cache (Hydra);
- ``ppa-simulate`` (simulate), ``ppa-deploy`` (deploy): the Flower app on the simulation
  runtime or the deployment engine on this machine, through `ppa.launch`.

The benchmark, ``ppa-bench``, trains sites directly and so lives with the client
(`client.bench`). `scripts/*.py` are one-line shims for environments without the console
scripts (the pose environment, ``.venv-pose``, only has the package on its path).
"""
