"""Shim: `python scripts/privacy_curve.py` runs `ppa-privacy-curve` (ppa.cli.privacy_curve)."""

from ppa.cli.privacy_curve import main

if __name__ == "__main__":
    raise SystemExit(main())
