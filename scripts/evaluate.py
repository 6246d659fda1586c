"""Shim: `python scripts/evaluate.py ...` runs `ppa.cli.evaluate` (evaluate a checkpoint)."""

from ppa.cli.evaluate import main

if __name__ == "__main__":
    main()
