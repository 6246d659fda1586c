"""Shim: `python scripts/run_simulation.py` runs `ppa-simulate` (ppa.cli.simulate)."""

from ppa.cli.simulate import main

if __name__ == "__main__":
    raise SystemExit(main())
