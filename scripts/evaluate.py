"""Shim: `python scripts/evaluate.py` runs `ppa-evaluate` (ppa.cli.evaluate)."""

from ppa.cli.evaluate import main

if __name__ == "__main__":
    raise SystemExit(main())
