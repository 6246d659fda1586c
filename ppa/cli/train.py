"""Centralised training, plain or DP-SGD (``privacy=dp``): the reference for federated runs.

    python scripts/train_central.py experiment=demo ppa=full train.epochs=8

Writes `<output_dir>/checkpoints/` and `train_history.json`; the last line printed is the
path of `last.pt` (feed it to the evaluation command).
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from ppa.config import CONFIG_DIR
from ppa.dp.central import train_central_private
from ppa.run_dir import claim_run_dir, job_output_dir
from ppa.training.central import train_central


def train(cfg: DictConfig) -> Path:
    """`train.epochs` epochs of central training; returns the final checkpoint path."""
    if cfg.privacy.get("enabled", False):
        # privacy=dp: per-record DP-SGD with Poisson batches and DP prototypes (ppa/dp).
        return train_central_private(cfg)
    return train_central(cfg)


@hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    # The run's own folder; a multirun job's own sub-folder (ppa/run_dir.py).
    claim_run_dir(job_output_dir(cfg))
    print(train(cfg))


if __name__ == "__main__":
    main()
