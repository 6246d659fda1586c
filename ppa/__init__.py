"""PPA: privacy-preserving visible-infrared person re-identification (KPR + DCMA).

The library knows nothing about Flower or Prometheus; `server/` and `client/` build on it.
"""

__version__ = "0.1.0"
