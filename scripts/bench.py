"""Shim: `python scripts/bench.py` runs `ppa-bench` (client.bench.cli)."""

from client.bench.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
