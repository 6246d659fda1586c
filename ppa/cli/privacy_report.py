"""Privacy-utility report of several anonymiser settings (`ppa.privacy_report.run` says what).

    ppa-privacy-report experiment=demo checkpoint=outputs/demo/latest/model_latest.pt
    ppa-privacy-report experiment=demo privacy_report.utility=false \\
        privacy_report.photos=/data/person_photos

The last line printed is the path of privacy_report.json.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from ppa.config import CONFIG_DIR
from ppa.privacy_report.run import run


@hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    print(run(cfg))


if __name__ == "__main__":
    main()
