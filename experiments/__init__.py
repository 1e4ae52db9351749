"""Runnable experiments, one per claim; installed as ``momentum_jax.experiments``.

Run from a checkout or an install with ``python -m momentum_jax.experiments.<name>``.
"""
