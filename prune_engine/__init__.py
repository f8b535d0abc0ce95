"""Prune sentence-embedding encoders with learned L0 structured masks, distil, evaluate, export."""

__version__ = "0.1.0"
