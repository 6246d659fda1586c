"""Shim: `python scripts/regdb_trials.py` runs `ppa-regdb-trials` (ppa.cli.regdb_trials)."""

from ppa.cli.regdb_trials import main

if __name__ == "__main__":
    raise SystemExit(main())
