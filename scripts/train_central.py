"""Shim: `python scripts/train_central.py ...` runs `ppa.cli.train` (centralised training)."""

from ppa.cli.train import main

if __name__ == "__main__":
    main()
