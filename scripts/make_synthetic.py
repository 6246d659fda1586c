"""Shim: `python scripts/make_synthetic.py` runs `ppa-make-synthetic` (ppa.cli.make_synthetic)."""

from ppa.cli.make_synthetic import main

if __name__ == "__main__":
    raise SystemExit(main())
