"""Adaptive memory momentum vs fixed momentum, on a quadratic and on a small transformer
(see ``config.py``)."""
