"""Numba kernels shared by the search, dedup and safety stages."""
