"""Data files shipped with the runner (the spot price table)."""
