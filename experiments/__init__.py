"""Runnable experiments, one per claim; installed as ``momentum_jax.experiments``.

Run from a checkout or an install with ``python -m momentum_jax.experiments.<name>``; every
experiment takes the options of ``momentum_jax.experiments.cli`` (the ``[...]`` of their usage
lines) and runs the recipe of ``momentum_jax.experiments.recipe``.
"""
