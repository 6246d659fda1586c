"""``ppa-privacy-curve``: per-site epsilon against raw-raw and anon-anon mAP.

    .venv/bin/ppa-privacy-curve privacy_curve.start=outputs/public/checkpoints/last.pt

One federated simulation (``ppa-simulate``, run as ``python -m ppa.cli.simulate``) per
epsilon of ``privacy_curve.epsilons`` and seed of ``privacy_curve.seeds``, all from the public
start; a run whose ``history.json`` already reaches the last round is reused. Writes
``curve.md`` (the table), ``curve.png`` and ``curve.json`` to ``privacy_curve.output_dir``
(ppa/dp/curve.py; docs/privacy.md). The last line printed is the path of curve.md.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from ppa.config import CONFIG_DIR, resolve_path
from ppa.dp.curve import markdown_table, plan_points, plot_curve, point_overrides, summarise

logger = logging.getLogger("privacy_curve")

# ppa-simulate, through the interpreter that runs this command (the console script need not
# be on PATH).
SIMULATION = (sys.executable, "-m", "ppa.cli.simulate")


def _finished(output_dir: Path, rounds: int) -> bool:
    path = output_dir / "history.json"
    if not path.is_file():
        return False
    return any(r.get("round") == rounds for r in json.loads(path.read_text())["rounds"])


def run_curve(cfg: DictConfig) -> Path:
    curve = cfg.privacy_curve
    if not curve.start:
        raise SystemExit("privacy_curve: set privacy_curve.start=<public checkpoint>")
    start = resolve_path(curve.start)
    out = resolve_path(curve.output_dir)
    rounds = int(curve.rounds)
    shared = [
        *curve.overrides,
        f"model.pretrained_path={start}",
        f"federation.rounds={rounds}",
        f"federation.local_epochs={int(curve.local_epochs)}",
        f"federation.evaluate_every={rounds}",
        "federation.evaluate_initial=true",
        f"federation.aggregation.server_momentum={float(curve.server_momentum)}",
        f"federation.amp={str(curve.amp).lower()}",
        # The sites follow the lists' train.warmup_epochs (a trained start: none), not the
        # warm-up the experiment may give its federation from random weights.
        "federation.warmup_epochs=null",
    ]
    points = plan_points(curve.epsilons, curve.seeds, out)
    for point in points:
        if _finished(point.output_dir, rounds):
            logger.info("epsilon %s seed %d: reusing %s", point.label, point.seed, point.output_dir)
            continue
        args = point_overrides(
            point, shared=shared, private=list(curve.private), public=list(curve.public)
        )
        command = [
            *SIMULATION,
            "--experiment",
            str(curve.experiment),
            "--timeout",
            str(float(curve.timeout)),
            *args,
        ]
        logger.info("epsilon %s seed %d: %s", point.label, point.seed, " ".join(command))
        subprocess.run(command, check=True)
    rows = summarise(points)
    out.mkdir(parents=True, exist_ok=True)
    (out / "curve.json").write_text(json.dumps(rows, indent=2))
    (out / "curve.md").write_text(markdown_table(rows))
    plot_curve(rows, out / "curve.png")
    logger.info("privacy-utility curve:\n%s", markdown_table(rows))
    return out / "curve.md"


@hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    print(run_curve(cfg))


if __name__ == "__main__":
    main()
