"""Shim: `python scripts/extract_keypoints.py` = `ppa-extract-keypoints` (pose environment)."""

from ppa.cli.extract_keypoints import main

if __name__ == "__main__":
    raise SystemExit(main())
