"""Reproducible performance measurements; each module runs its baseline in the same run."""
