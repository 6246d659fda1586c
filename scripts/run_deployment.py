"""Shim: `python scripts/run_deployment.py` runs `ppa-deploy` (ppa.cli.deploy)."""

from ppa.cli.deploy import main

if __name__ == "__main__":
    raise SystemExit(main())
