"""Shim: `python scripts/privacy_report.py ...` runs `ppa.cli.privacy_report`."""

from ppa.cli.privacy_report import main

if __name__ == "__main__":
    main()
