"""Geometry: the Lorentz model (HySAC) and the cosine baseline, as pure functions."""
