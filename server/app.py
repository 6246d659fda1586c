"""Flower ServerApp: compose the Hydra config named by the run-config and run the rounds."""

from __future__ import annotations

import logging

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from ppa.config import load_run_config
from server.run import FederatedRun

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    cfg = load_run_config(context.run_config)
    resume = str(context.run_config.get("resume", False)).lower() in ("1", "true", "yes")
    FederatedRun(cfg, resume=resume, run_id=str(context.run_id)).run(grid)
