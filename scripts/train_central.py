"""Shim: `python scripts/train_central.py` runs `ppa-train` (ppa.cli.train)."""

from ppa.cli.train import main

if __name__ == "__main__":
    raise SystemExit(main())
