"""Evaluation: feature extraction, the one evaluation path and its typed report, retrieval
metrics and their per-query reference. Imports no training code."""
