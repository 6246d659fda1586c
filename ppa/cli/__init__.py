"""Command-line entry points of the library (Hydra): each parses the config and calls ppa."""
