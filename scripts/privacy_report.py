"""Shim: `python scripts/privacy_report.py` runs `ppa-privacy-report` (ppa.cli.privacy_report)."""

from ppa.cli.privacy_report import main

if __name__ == "__main__":
    raise SystemExit(main())
