"""Shim: `python scripts/compare_fed_central.py` runs `ppa-compare` (ppa.cli.compare)."""

from ppa.cli.compare import main

if __name__ == "__main__":
    raise SystemExit(main())
