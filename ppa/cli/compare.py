"""Federated against centralised training at equal epochs, for several seeds, in one command.

    .venv/bin/ppa-compare     # the demo recipe: 3 seeds, 16 + 32 epochs
    .venv/bin/ppa-compare dataset=synthetic_sysu_alt
    .venv/bin/ppa-compare 'compare.seeds=[0]' 'compare.epochs=[16]' \
        train.pseudo_infrared.fraction=0.5

Settings live in configs/compare/default.yaml (`compare.*`); every other override goes to
both sides (ppa-simulate for the federation, ppa-train for the centralised run). Writes
comparison.json (the table and every run's mAP-against-epochs curve and command),
comparison.md and comparison.png into `compare.output_dir`; the last line printed is the path
of comparison.md. Exit status 1 when any training failed.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from ppa.compare.collect import CheckpointEvaluator, central_curve, federated_curve
from ppa.compare.plan import plan_jobs
from ppa.compare.runner import run_jobs
from ppa.compare.table import RunResult, write_table
from ppa.config import load_config, resolve_path
from ppa.launch.settings import PROJECT_ROOT

logger = logging.getLogger("compare")

REPO = PROJECT_ROOT


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    overrides = list(sys.argv[1:] if argv is None else argv)
    cfg = load_config([f"experiment={load_config(overrides).compare.experiment}", *overrides])
    cmp = cfg.compare
    out_dir = resolve_path(cmp.output_dir)
    passed = [o for o in overrides if not o.lstrip("+~").startswith("compare.")]
    jobs = plan_jobs(cfg, passed, out_dir, scripts=REPO / "scripts")
    finished = run_jobs(
        jobs,
        parallel=int(cmp.parallel),
        timeout=float(cmp.timeout),
        log_dir=out_dir / "logs",
        cwd=REPO,
    )
    failed = [f for f in finished if f.returncode != 0]
    evaluator = CheckpointEvaluator(cfg, list(cmp.protocols))
    results = []
    for f in finished:
        if f.returncode != 0:
            continue
        job = f.job
        curve = (
            federated_curve(job, int(cfg.federation.local_epochs))
            if job.side == "federated"
            else central_curve(job, evaluator)
        )
        results.append(RunResult(job.side, job.budget, job.seed, curve, " ".join(job.command)))
    if not results:
        logger.error("no training finished; logs in %s", out_dir / "logs")
        return 1
    title = f"federated vs centralised: {cfg.dataset.name}, {' '.join(passed) or 'demo recipe'}"
    paths = write_table(results, list(cmp.protocols), out_dir, title)
    logger.info("\n%s", paths["markdown"].read_text())
    for f in failed:
        logger.error("%s failed (rc=%d): %s", f.job.name, f.returncode, f.log)
    print(paths["markdown"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
