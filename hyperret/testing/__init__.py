"""Test and benchmark data: HySAC-like generated points."""
