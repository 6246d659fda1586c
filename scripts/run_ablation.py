"""Shim: `python scripts/run_ablation.py` runs `ppa-ablation` (ppa.cli.ablation)."""

from ppa.cli.ablation import main

if __name__ == "__main__":
    raise SystemExit(main())
